"""Model output made chat-ready: Markdown (markdown-it-py) to WeChat text, LaTeX, XML-safe, split."""
