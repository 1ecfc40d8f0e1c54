"""Model output made chat-ready: Markdown to WeChat text and WeCom markdown, LaTeX, splitting."""
