//! The ASP.NET Core SignalR hub protocol, server side.
