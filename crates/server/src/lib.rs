//! The Next Chat server.
