//! Feeds arbitrary bytes to everything a server decodes from a client:
//! the hello, frame headers, rkyv requests, and (as an append) the checked
//! batch payload. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_codec::EncodedBatch;
use lode_protocol::wire::{self, HELLO_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some(hello) = data.first_chunk::<HELLO_LEN>() {
        let _ = wire::decode_hello(hello);
    }
    let mut rest = data;
    while let Ok(Some((frame, used))) = wire::decode_frame(rest, 1 << 20) {
        let _ = wire::decode_request(frame.payload);
        let _ = wire::decode_response(frame.payload);
        let _ = EncodedBatch::from_payload(frame.payload);
        rest = rest.get(used..).unwrap_or_default();
    }
    let _ = wire::decode_request(data);
    let _ = EncodedBatch::from_payload(data);
});
