//! Feeds arbitrary bytes to the WAL frame decoder and, when a frame
//! decodes, to the checked rkyv access of its batch and every record in
//! it. Nothing may panic; every failure must be an error value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_codec::{access_record, decode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data) {
        if let Ok(batch) = frame.batch() {
            for record in batch.iter() {
                let _ = record.to_owned_record();
            }
        }
    }
    // The same bytes as a sealed segment's single-record value.
    if let Ok(record) = access_record(data) {
        let _ = record.to_owned_record();
    }
    // And as a batch payload without a frame around it, so the fuzzer
    // need not forge checksums to reach the rkyv checks.
    if let Ok(batch) = lode_codec::access_batch(data) {
        for record in batch.iter() {
            let _ = record.to_owned_record();
        }
    }
});
