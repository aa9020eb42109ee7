//! The daemon: worker threads that serve requests from channels.
