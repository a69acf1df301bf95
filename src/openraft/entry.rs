//! How an openraft entry is stored as a keel entry payload: one codec byte, then the entry
//! encoded by postcard (its serde data model; the wire format of postcard 1.x is specified and
//! frozen). The codec byte lets a later keel change the encoding and still read old entries.

use crate::error::{Corruption, CorruptionKind, Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// The first byte of every payload this adapter writes: postcard 1.x of openraft 0.9's `Entry`.
pub(crate) const CODEC_POSTCARD_V1: u8 = 1;

/// Appends the payload of `entry` to `out`.
pub(crate) fn encode<E: Serialize>(entry: &E, out: &mut Vec<u8>) -> Result<()> {
    out.push(CODEC_POSTCARD_V1);
    let body = postcard::to_allocvec(entry)
        .map_err(|e| Error::InvalidArgument(format!("openraft entry does not encode: {e}")))?;
    out.extend_from_slice(&body);
    Ok(())
}

/// Decodes the payload of keel entry `keel_index` in the log at `log_dir`. The bytes passed
/// keel's checksum, so a failure here is not a torn write but bytes that are not this codec's:
/// corruption naming the log directory and the affected index (keel's `Log` does not expose the
/// record's segment and offset; `offset` is 0).
pub(crate) fn decode<E: DeserializeOwned>(payload: &[u8], log_dir: &Path, keel_index: u64) -> Result<E> {
    let refuse = |what: String| {
        let mut c = Corruption::new(
            log_dir,
            0,
            CorruptionKind::Malformed(format!("the payload of entry {keel_index} is not an openraft entry: {what}")),
        );
        c.affected_indexes = Some((keel_index, keel_index));
        c.into_error()
    };
    match payload.split_first() {
        None => Err(refuse("it is empty".into())),
        Some((&CODEC_POSTCARD_V1, body)) => match postcard::take_from_bytes::<E>(body) {
            Ok((entry, [])) => Ok(entry),
            Ok((_, rest)) => Err(refuse(format!("{} bytes follow the entry", rest.len()))),
            Err(e) => Err(refuse(e.to_string())),
        },
        Some((codec, _)) => Err(refuse(format!("unknown codec byte {codec}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that are not this codec's are corruption naming the index, never a panic.
    #[test]
    fn undecodable_payloads_are_corruption() {
        let mut good = Vec::new();
        encode(&(7u64, String::from("seven")), &mut good).unwrap();
        assert_eq!(decode::<(u64, String)>(&good, Path::new("log"), 3).unwrap(), (7, "seven".into()));
        let mut trailing = good.clone();
        trailing.push(0);
        let mut other_codec = good.clone();
        other_codec[0] = 9;
        for bad in [&[][..], &good[..good.len() - 1], &trailing, &other_codec, &[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]
        {
            let err = decode::<(u64, String)>(bad, Path::new("log"), 3).unwrap_err();
            let c = err.corruption().unwrap_or_else(|| panic!("{err}"));
            assert_eq!(c.affected_indexes, Some((3, 3)));
        }
    }
}
