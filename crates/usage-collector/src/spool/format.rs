//! Record encoding.
//!
//! ```text
//! record  = magic:[F5 'S' 'P' '2']  length:u32le  crc32:u32le  payload[length]
//! payload = version:u8(=1)  signal:u8  received_unix_nano:u64le  body
//! ```
//!
//! The CRC (CRC-32, IEEE) covers the length and the payload, so a damaged length is caught like
//! any other damage, and the magic lets recovery find the next record after damaged bytes.
//! Collectors before this format wrote `length:u32le crc32:u32le payload` with the CRC over the
//! payload only; such records are still read. The magic read as a length is larger than any
//! record, so the two forms cannot be mistaken for each other.

use prost::bytes::Bytes;

/// The first bytes of every record.
pub const MAGIC: [u8; 4] = [0xF5, b'S', b'P', b'2'];
/// Bytes before a record's payload.
pub const HEADER: usize = 12;
/// Bytes before a payload in records written by earlier collectors.
const LEGACY_HEADER: usize = 8;
/// Payload format version.
const VERSION: u8 = 1;
/// Bytes of the payload before its body.
const PAYLOAD_HEADER: usize = 10;
/// Fewest bytes a record takes.
pub const MIN_RECORD: usize = HEADER + PAYLOAD_HEADER;
/// Largest payload a record holds; an append of a larger one is refused, and a length field
/// claiming more is corruption.
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;
/// Largest body a record holds.
pub const MAX_BODY: usize = MAX_PAYLOAD - PAYLOAD_HEADER;

/// What a record's body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolSignal {
    /// An OTLP `ExportLogsServiceRequest` as received (written by collectors before rows
    /// records; still read).
    Logs,
    /// An OTLP `ExportTraceServiceRequest` as received (as [`SpoolSignal::Logs`]).
    Traces,
    /// A collector heartbeat; the body is the collector's instance name.
    Heartbeat,
    /// Damaged bytes found at recovery, replaced (after a copy went to quarantine) by a record
    /// of the same length that readers skip.
    Padding,
    /// An accepted request's events, mapped to rows ([`super::rows`]).
    Rows,
}

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Its signal.
    pub signal: SpoolSignal,
    /// When the collector received it (the time of records that carry none).
    pub received_unix_nano: u64,
    /// What the signal says it holds.
    pub body: Bytes,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or the length announces.
    #[error("record runs past the end of the data")]
    Truncated,
    /// The length field is absurd.
    #[error("record length {0} is impossible")]
    BadLength(usize),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The payload's own header is wrong.
    #[error("unknown payload version or signal")]
    BadPayload,
}

fn signal_byte(signal: SpoolSignal) -> u8 {
    match signal {
        SpoolSignal::Logs => 1,
        SpoolSignal::Traces => 2,
        SpoolSignal::Heartbeat => 3,
        SpoolSignal::Rows => 4,
        SpoolSignal::Padding => 5,
    }
}

/// The whole length of the record at the start of `data`, as its header claims (`None` when
/// the header itself is incomplete).
pub fn claimed_len(data: &[u8]) -> Option<usize> {
    let u32_at = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    if data.starts_with(&MAGIC) {
        u32_at(4).map(|len| HEADER + len)
    } else if data.len() < MAGIC.len() && MAGIC.starts_with(data) {
        None
    } else {
        u32_at(0).map(|len| LEGACY_HEADER + len)
    }
}

impl Payload {
    /// Appends this payload as one record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let length = PAYLOAD_HEADER + self.body.len();
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(length as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(VERSION);
        out.push(signal_byte(self.signal));
        out.extend_from_slice(&self.received_unix_nano.to_le_bytes());
        out.extend_from_slice(&self.body);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out[start + 4..start + 8]);
        crc.update(&out[start + HEADER..]);
        out[start + 8..start + 12].copy_from_slice(&crc.finalize().to_le_bytes());
    }

    /// A record of exactly `len` bytes (at least [`MIN_RECORD`]) that readers skip.
    pub fn padding(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        Payload {
            signal: SpoolSignal::Padding,
            received_unix_nano: 0,
            body: Bytes::from(vec![0; len.saturating_sub(MIN_RECORD)]),
        }
        .encode_into(&mut out);
        out
    }

    /// Size of this payload's record.
    pub fn record_len(&self) -> usize {
        HEADER + PAYLOAD_HEADER + self.body.len()
    }

    /// Decodes the record at the start of `data` (this format or the earlier one); returns it
    /// and its length.
    pub fn decode(data: &[u8]) -> Result<(Payload, usize), DecodeError> {
        if data.starts_with(&MAGIC) {
            Self::decode_current(data)
        } else if data.len() < MAGIC.len() && MAGIC.starts_with(data) {
            Err(DecodeError::Truncated)
        } else {
            Self::decode_legacy(data)
        }
    }

    fn decode_current(data: &[u8]) -> Result<(Payload, usize), DecodeError> {
        let header = data.get(..HEADER).ok_or(DecodeError::Truncated)?;
        let length = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        if !(PAYLOAD_HEADER..=MAX_PAYLOAD).contains(&length) {
            return Err(DecodeError::BadLength(length));
        }
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let payload = data
            .get(HEADER..HEADER + length)
            .ok_or(DecodeError::Truncated)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[4..8]);
        hasher.update(payload);
        if hasher.finalize() != crc {
            return Err(DecodeError::Checksum);
        }
        Ok((Self::parse_payload(payload)?, HEADER + length))
    }

    fn decode_legacy(data: &[u8]) -> Result<(Payload, usize), DecodeError> {
        let header = data.get(..LEGACY_HEADER).ok_or(DecodeError::Truncated)?;
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if !(PAYLOAD_HEADER..=MAX_PAYLOAD).contains(&length) {
            return Err(DecodeError::BadLength(length));
        }
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let payload = data
            .get(LEGACY_HEADER..LEGACY_HEADER + length)
            .ok_or(DecodeError::Truncated)?;
        if crc32fast::hash(payload) != crc {
            return Err(DecodeError::Checksum);
        }
        Ok((Self::parse_payload(payload)?, LEGACY_HEADER + length))
    }

    fn parse_payload(payload: &[u8]) -> Result<Payload, DecodeError> {
        let signal = match (payload[0], payload[1]) {
            (VERSION, 1) => SpoolSignal::Logs,
            (VERSION, 2) => SpoolSignal::Traces,
            (VERSION, 3) => SpoolSignal::Heartbeat,
            (VERSION, 4) => SpoolSignal::Rows,
            (VERSION, 5) => SpoolSignal::Padding,
            _ => return Err(DecodeError::BadPayload),
        };
        let received_unix_nano = u64::from_le_bytes(payload[2..10].try_into().expect("8 bytes"));
        Ok(Payload {
            signal,
            received_unix_nano,
            body: Bytes::copy_from_slice(&payload[PAYLOAD_HEADER..]),
        })
    }

    /// Where the next record that decodes starts, searching `data` from `from` (a record of
    /// this format, found by its magic).
    pub fn next_valid(data: &[u8], from: usize) -> Option<usize> {
        let mut at = from;
        while let Some(found) = data
            .get(at..)?
            .windows(MAGIC.len())
            .position(|w| w == MAGIC)
        {
            let candidate = at + found;
            if Payload::decode_current(&data[candidate..]).is_ok() {
                return Some(candidate);
            }
            at = candidate + 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Payload {
        Payload {
            signal: SpoolSignal::Traces,
            received_unix_nano: 42,
            body: Bytes::from_static(b"otlp bytes"),
        }
    }

    #[test]
    fn round_trip_and_damage_is_detected() {
        let payload = payload();
        let mut data = Vec::new();
        payload.encode_into(&mut data);
        assert_eq!(data.len(), payload.record_len());
        assert_eq!(claimed_len(&data), Some(data.len()));
        assert_eq!(Payload::decode(&data).unwrap(), (payload, data.len()));
        assert_eq!(
            Payload::decode(&data[..data.len() - 1]).unwrap_err(),
            DecodeError::Truncated
        );
        let mut flipped = data.clone();
        flipped[16] ^= 1;
        assert_eq!(
            Payload::decode(&flipped).unwrap_err(),
            DecodeError::Checksum
        );
        // A damaged length is caught by the CRC, not taken as a torn tail.
        let mut length = data.clone();
        length[4] ^= 4; // 20 → 16: shorter, so the bytes are there and only the CRC can tell
        assert_eq!(Payload::decode(&length).unwrap_err(), DecodeError::Checksum);
        assert_eq!(
            Payload::decode(&[0; 8]).unwrap_err(),
            DecodeError::BadLength(0)
        );
    }

    #[test]
    fn records_of_the_earlier_format_are_still_read() {
        // length:u32le crc32:u32le payload, the CRC over the payload only.
        let mut body = vec![VERSION, 2];
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(b"otlp bytes");
        let mut data = (body.len() as u32).to_le_bytes().to_vec();
        data.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        data.extend_from_slice(&body);
        assert_eq!(claimed_len(&data), Some(data.len()));
        assert_eq!(Payload::decode(&data).unwrap(), (payload(), data.len()));
    }

    #[test]
    fn the_next_valid_record_is_found_after_damage_and_padding_fills_a_gap() {
        let mut data = Vec::new();
        payload().encode_into(&mut data);
        let second = data.len();
        payload().encode_into(&mut data);
        data[5] ^= 0xff; // the first record's length
        assert!(Payload::decode(&data).is_err());
        assert_eq!(Payload::next_valid(&data, 1), Some(second));
        let pad = Payload::padding(second);
        assert_eq!(pad.len(), second);
        let (padding, used) = Payload::decode(&pad).unwrap();
        assert_eq!((padding.signal, used), (SpoolSignal::Padding, second));
    }
}
