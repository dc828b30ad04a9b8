//! Backends for Next Chat.
