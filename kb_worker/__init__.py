"""One knowledge base: its triples, its embedding model, its faiss index, and the soft-label exchange."""
