"""In-training API (placeholder)."""
