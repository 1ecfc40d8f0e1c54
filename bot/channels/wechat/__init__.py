"""WeChat Official Account: protocol, reply modes, mailbox, delivery, API client, sandbox."""
