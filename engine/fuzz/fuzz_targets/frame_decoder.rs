//! Feeds arbitrary bytes to the WAL frame decoder and, when a frame
//! decodes, to its batch trailer and the checked rkyv access of every
//! record in it, and to the sealed values' decoders (one record, a chunk
//! of records in columns). Nothing may panic; every failure must be an
//! error value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_codec::{
    BatchView, Chunk, ChunkReader, access_record, decode_frame, decode_frame_unchecksummed,
};

fn read_batch(batch: BatchView<'_>) {
    let _ = batch.ts_range();
    for record in batch.iter().flatten() {
        let _ = record.to_owned_record();
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data) {
        if let Ok(batch) = frame.batch() {
            read_batch(batch);
        }
    }
    // The decoder for frames read again in place, which skips the checksum.
    if let Ok(frame) = decode_frame_unchecksummed(data) {
        if let Ok(batch) = frame.batch() {
            read_batch(batch);
        }
    }
    // The same bytes as a batch payload without a frame around it, so the
    // fuzzer need not forge checksums to reach the trailer and rkyv checks,
    // and as a sealed segment's single-record value.
    if let Ok(batch) = BatchView::parse(data) {
        read_batch(batch);
    }
    if let Ok(record) = access_record(data) {
        let _ = record.to_owned_record();
    }
    if let Ok(chunk) = Chunk::parse(data) {
        let mut reader = ChunkReader::default();
        let mut at = chunk.start();
        for _ in 0..chunk.len() {
            if reader.read(&chunk, &mut at).is_err() {
                break;
            }
        }
        let _ = chunk.seek(chunk.start(), chunk.len() - 1);
    }
});
