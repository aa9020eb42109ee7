//! A channel: the rings, completion records and data region one requester group shares with the daemon.
