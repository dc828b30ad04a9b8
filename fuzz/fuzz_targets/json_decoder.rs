//! The `json` hub protocol decoder on arbitrary bytes in arbitrary chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use next_chat_signalr::Protocol;

fuzz_target!(|data: &[u8]| next_chat_fuzz::check_decoder(Protocol::Json, data));
