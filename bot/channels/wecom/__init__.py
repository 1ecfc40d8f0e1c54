"""WeCom intelligent robot: protocol, streamed answers, response_url delivery, API client, sandbox."""
