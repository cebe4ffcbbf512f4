"""The data side of a fine-tune, read top to bottom: splits loaded and checked (`splits`), chat rows
turned into one conversation shape (`conversations`), rendered with the chat template and masked
(`chat_templates`), tokenized (`encoding`); the built-in demo sets (`demo_data`, `demo_chat`)."""
