//! The chat rules' limits: what one user, connection or group may do.

use next_chat_core::{ChatConfig, Limits, Rate};

use super::Values;

pub(super) fn chat(v: &Values) -> ChatConfig {
    let limits = Limits {
        group_id_max_chars: v.max_group_id_chars,
        text_max_chars: v.max_text_chars,
        ..Limits::default()
    };
    let rate = v.user_messages_per_second;
    // Two seconds of the rate, for a sender that stalled.
    let burst = v.user_messages_burst.unwrap_or(rate.saturating_mul(2));
    ChatConfig {
        limits,
        max_members: v.max_members,
        history_on_join: v.history_on_join,
        require_join_to_send: v.require_join_to_send,
        auto_create_groups: v.auto_create_groups,
        history_page_max_bytes: v.history_page_max_bytes,
        max_groups_per_connection: v.max_groups_per_connection,
        max_connections_per_user_in_group: v.max_connections_per_user_in_group,
        user_messages: Rate::per_second(rate, burst),
        groups_created: Rate::per_minute(v.groups_created_per_minute, v.groups_created_per_minute),
        max_groups: v.max_groups,
        max_groups_owned_per_user: v.max_groups_owned_per_user,
        history_read_bytes: Rate::per_second(
            v.history_read_bytes_per_second,
            v.history_read_burst_bytes,
        ),
        history_reads_in_flight_per_user: v.history_reads_in_flight_per_user,
        ..ChatConfig::default()
    }
}
