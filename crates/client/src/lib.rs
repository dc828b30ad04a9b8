//! A Rust client for Next Chat.
