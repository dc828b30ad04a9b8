//! What the request handlers and sessions of one server share.

use std::sync::Arc;

use super::config::HubConfig;
use super::hub::Hub;
use super::load::Load;
use super::registry::Registry;

/// Everything the request handlers and sessions share.
pub(crate) struct ServerState<H: Hub> {
    pub(crate) hub: Arc<H>,
    pub(crate) config: HubConfig,
    pub(crate) registry: Arc<Registry>,
    /// Whether the runtime has time for direct socket writes (see `load`).
    pub(crate) load: Arc<Load>,
}
