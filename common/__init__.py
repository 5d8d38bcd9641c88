"""Small torch-free pieces shared by several folders: settings, logging, vocabulary, KV block hashing."""
