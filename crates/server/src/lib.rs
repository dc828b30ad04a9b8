//! The Next Chat server: configuration, the hub that maps SignalR onto the chat
//! rules, authentication and TLS at the HTTP edge, metrics, and the application that wires them to the chosen backends.

pub mod app;
pub mod auth;
mod backends;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod serve;
pub mod tls;
pub mod web;

pub use app::App;
pub use config::{Cli, Config};
