"""The tiny pretrained base: a broad non-lofi corpus, and the committed weights it trained (issue 25)."""
