//! The host backend: CPU agent threads that post requests through the very rings a GPU uses.
