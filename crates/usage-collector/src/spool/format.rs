//! Record encoding: `length:u32le crc32:u32le payload`.

use prost::bytes::Bytes;

/// Bytes before a record's payload.
pub const HEADER: usize = 8;
/// Payload format version.
const VERSION: u8 = 1;
/// Bytes of the payload before its body.
const PAYLOAD_HEADER: usize = 10;
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

impl Payload {
    /// Appends this payload as one record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let length = PAYLOAD_HEADER + self.body.len();
        let start = out.len();
        out.extend_from_slice(&(length as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(VERSION);
        out.push(match self.signal {
            SpoolSignal::Logs => 1,
            SpoolSignal::Traces => 2,
            SpoolSignal::Heartbeat => 3,
            SpoolSignal::Rows => 4,
        });
        out.extend_from_slice(&self.received_unix_nano.to_le_bytes());
        out.extend_from_slice(&self.body);
        let crc = crc32fast::hash(&out[start + HEADER..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Size of this payload's record.
    pub fn record_len(&self) -> usize {
        HEADER + PAYLOAD_HEADER + self.body.len()
    }

    /// Decodes the record at the start of `data`; returns it and its length.
    pub fn decode(data: &[u8]) -> Result<(Payload, usize), DecodeError> {
        let header = data.get(..HEADER).ok_or(DecodeError::Truncated)?;
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if !(PAYLOAD_HEADER..=MAX_PAYLOAD).contains(&length) {
            return Err(DecodeError::BadLength(length));
        }
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let body = data
            .get(HEADER..HEADER + length)
            .ok_or(DecodeError::Truncated)?;
        if crc32fast::hash(body) != crc {
            return Err(DecodeError::Checksum);
        }
        let signal = match (body[0], body[1]) {
            (VERSION, 1) => SpoolSignal::Logs,
            (VERSION, 2) => SpoolSignal::Traces,
            (VERSION, 3) => SpoolSignal::Heartbeat,
            (VERSION, 4) => SpoolSignal::Rows,
            _ => return Err(DecodeError::BadPayload),
        };
        let received_unix_nano = u64::from_le_bytes(body[2..10].try_into().expect("8 bytes"));
        Ok((
            Payload {
                signal,
                received_unix_nano,
                body: Bytes::copy_from_slice(&body[PAYLOAD_HEADER..]),
            },
            HEADER + length,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_detected() {
        let payload = Payload {
            signal: SpoolSignal::Traces,
            received_unix_nano: 42,
            body: Bytes::from_static(b"otlp bytes"),
        };
        let mut data = Vec::new();
        payload.encode_into(&mut data);
        assert_eq!(data.len(), payload.record_len());
        assert_eq!(Payload::decode(&data).unwrap(), (payload, data.len()));
        assert_eq!(
            Payload::decode(&data[..data.len() - 1]).unwrap_err(),
            DecodeError::Truncated
        );
        let mut flipped = data.clone();
        flipped[12] ^= 1;
        assert_eq!(
            Payload::decode(&flipped).unwrap_err(),
            DecodeError::Checksum
        );
        assert_eq!(
            Payload::decode(&[0; 8]).unwrap_err(),
            DecodeError::BadLength(0)
        );
    }
}
