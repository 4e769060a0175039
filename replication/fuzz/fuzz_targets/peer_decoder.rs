//! Feeds arbitrary bytes to everything a node decodes from a peer or its
//! disk: a message as a request and as a response (its batch entries'
//! payloads checked record by record), a membership payload, the log's
//! state file, a stored snapshot description, a replicated setting (a
//! token is one), and the length prefix a stream reader trusts. Nothing
//! may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_replication_wire::wire;

fuzz_target!(|data: &[u8]| {
    let _ = wire::message_len(data);
    let _ = wire::decode_request(data);
    let _ = wire::decode_response(data);
    let _ = wire::decode_membership(data);
    let _ = wire::decode_state(data);
    let _ = wire::decode_description(data);
    let _ = wire::decode_setting(data);
});
