"""Protocol code of each channel: signing, AES, parsing and rendering; no web or queue imports."""
