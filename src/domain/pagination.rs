//! Page sizes and opaque keyset cursors.
//!
//! A cursor is the sort key of the last item of a page, so the next page is "everything after
//! this key": inserts elsewhere in the order can never shift items across a page boundary (no
//! skip, no repeat), which offsets cannot promise. The encoding is a version byte, a kind byte
//! (so a sessions cursor is refused by the messages list) and the key, base64url without padding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

use super::{Invalid, MessageId, SessionId};

/// Items per page: 1..=1000, default 50.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    pub const MAX: u32 = 1000;
    pub const DEFAULT: Limit = Limit(50);

    pub fn parse(raw: &str) -> Result<Limit, Invalid> {
        match raw.parse::<u32>() {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Limit(n)),
            _ => Err(Invalid::new(format!(
                "limit must be an integer from 1 to {}, not `{}`",
                Self::MAX,
                super::clip(raw)
            ))),
        }
    }

    pub fn new(n: u32) -> Option<Limit> {
        (1..=Self::MAX).contains(&n).then_some(Limit(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Limit {
    fn default() -> Self {
        Limit::DEFAULT
    }
}

/// From a number (a query parameter's text is parsed first); the message leaves naming the
/// parameter to the caller.
impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(deserializer)?;
        u32::try_from(n).ok().and_then(Limit::new).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "must be an integer from 1 to {}, not `{n}`",
                Self::MAX
            ))
        })
    }
}

impl PartialSchema for Limit {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(1))
            .maximum(Some(Self::MAX))
            .default(Some(Self::DEFAULT.0.into()))
            .description(Some("Page size"))
            .into()
    }
}

impl ToSchema for Limit {}

/// Direction of a message list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Asc => "asc",
            Order::Desc => "desc",
        }
    }
}

/// Position after the last session of a page (sessions sort by `updated_at` desc, `id` desc).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionCursor {
    pub updated_at: i64,
    pub id: SessionId,
}

/// Position after the last message of a page, in the direction the page was read.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageCursor {
    pub order: Order,
    pub created_at: i64,
    pub id: MessageId,
}

/// Position after the last hit of a search page. `cap` is the newest message the first page
/// could see: later pages ignore messages written after it. `floor` is the oldest message in
/// the ranking window (0 when every match is ranked). `token` names the first page's kept
/// ranking (0: none) and `offset` the position in it ([`SearchCursor::PAST_KEPT`] once pages
/// continue by rank past it); without it, pages continue by `rank` after `seq`.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchCursor {
    pub rank: f64,
    pub seq: i64,
    pub cap: i64,
    pub floor: i64,
    pub token: u64,
    pub offset: u32,
}

impl SearchCursor {
    /// The `offset` of a page continuing by rank after the end of its kept ranking.
    pub const PAST_KEPT: u32 = u32::MAX;
}

const VERSION: u8 = 1;
const KIND_SESSIONS: u8 = 1;
const KIND_MESSAGES: u8 = 2;
const KIND_SEARCH: u8 = 3;

fn invalid_cursor() -> Invalid {
    Invalid::new("cursor is invalid: pass the next_cursor of a previous page of this same list")
}

/// Reads a cursor's bytes in order; any short or malformed input is an invalid cursor.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Invalid> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or_else(invalid_cursor)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.take::<1>()?[0])
    }

    fn i64(&mut self) -> Result<i64, Invalid> {
        Ok(i64::from_be_bytes(self.take::<8>()?))
    }

    fn rest_str(self) -> Result<&'a str, Invalid> {
        std::str::from_utf8(self.0).map_err(|_| invalid_cursor())
    }
}

fn open(raw: &str, kind: u8) -> Result<Vec<u8>, Invalid> {
    let bytes = URL_SAFE_NO_PAD
        .decode(raw.as_bytes())
        .map_err(|_| invalid_cursor())?;
    match bytes.as_slice() {
        [VERSION, k, ..] if *k == kind => Ok(bytes),
        _ => Err(invalid_cursor()),
    }
}

fn seal(kind: u8, fill: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = Vec::with_capacity(48);
    bytes.push(VERSION);
    bytes.push(kind);
    fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SessionCursor {
    pub fn encode(&self) -> String {
        seal(KIND_SESSIONS, |b| {
            b.extend_from_slice(&self.updated_at.to_be_bytes());
            b.extend_from_slice(self.id.as_str().as_bytes());
        })
    }

    pub fn decode(raw: &str) -> Result<Self, Invalid> {
        let bytes = open(raw, KIND_SESSIONS)?;
        let mut reader = Reader(&bytes[2..]);
        let updated_at = reader.i64()?;
        let id = SessionId::parse(reader.rest_str()?).ok_or_else(invalid_cursor)?;
        Ok(SessionCursor { updated_at, id })
    }
}

impl MessageCursor {
    pub fn encode(&self) -> String {
        seal(KIND_MESSAGES, |b| {
            b.push(match self.order {
                Order::Asc => 0,
                Order::Desc => 1,
            });
            b.extend_from_slice(&self.created_at.to_be_bytes());
            b.extend_from_slice(self.id.as_str().as_bytes());
        })
    }

    pub fn decode(raw: &str) -> Result<Self, Invalid> {
        let bytes = open(raw, KIND_MESSAGES)?;
        let mut reader = Reader(&bytes[2..]);
        let order = match reader.u8()? {
            0 => Order::Asc,
            1 => Order::Desc,
            _ => return Err(invalid_cursor()),
        };
        let created_at = reader.i64()?;
        let id = MessageId::parse(reader.rest_str()?).ok_or_else(invalid_cursor)?;
        Ok(MessageCursor {
            order,
            created_at,
            id,
        })
    }
}

impl SearchCursor {
    pub fn encode(&self) -> String {
        seal(KIND_SEARCH, |b| {
            b.extend_from_slice(&self.rank.to_bits().to_be_bytes());
            b.extend_from_slice(&self.seq.to_be_bytes());
            b.extend_from_slice(&self.cap.to_be_bytes());
            b.extend_from_slice(&self.floor.to_be_bytes());
            b.extend_from_slice(&self.token.to_be_bytes());
            b.extend_from_slice(&self.offset.to_be_bytes());
        })
    }

    pub fn decode(raw: &str) -> Result<Self, Invalid> {
        let bytes = open(raw, KIND_SEARCH)?;
        let mut reader = Reader(&bytes[2..]);
        let rank = f64::from_bits(reader.i64()? as u64);
        let seq = reader.i64()?;
        let cap = reader.i64()?;
        let floor = reader.i64()?;
        let token = reader.i64()? as u64;
        let offset = u32::from_be_bytes(reader.take::<4>()?);
        if !rank.is_finite() || !reader.0.is_empty() {
            return Err(invalid_cursor());
        }
        Ok(SearchCursor {
            rank,
            seq,
            cap,
            floor,
            token,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IdGenerator;

    #[test]
    fn limits_outside_the_range_are_refused() {
        assert_eq!(Limit::parse("1").unwrap().get(), 1);
        assert_eq!(Limit::parse("1000").unwrap().get(), 1000);
        for bad in ["0", "1001", "-1", "ten", "", "1.5", "99999999999999999999"] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_kinds() {
        let mut generator = IdGenerator::default();
        let (ms, value) = generator.next(1_763_800_000_000);
        let sessions = SessionCursor {
            updated_at: ms,
            id: SessionId::from_value(value),
        };
        let encoded = sessions.encode();
        assert_eq!(SessionCursor::decode(&encoded).unwrap(), sessions);
        assert!(MessageCursor::decode(&encoded).is_err());

        let messages = MessageCursor {
            order: Order::Desc,
            created_at: ms,
            id: MessageId::from_value(value),
        };
        assert_eq!(MessageCursor::decode(&messages.encode()).unwrap(), messages);

        let search = SearchCursor {
            rank: -3.25,
            seq: 42,
            cap: 99,
            floor: 7,
            token: 0xdead_beef,
            offset: 50,
        };
        assert_eq!(SearchCursor::decode(&search.encode()).unwrap(), search);
    }

    #[test]
    fn garbage_cursors_are_invalid_not_panics() {
        for bad in [
            "",
            "!!!",
            "AAAA",
            "AQ",
            "AQE",
            "AQEAAAAAAAAAAXNlc18",
            "%00",
            "😀",
        ] {
            assert!(SessionCursor::decode(bad).is_err(), "{bad}");
            assert!(MessageCursor::decode(bad).is_err(), "{bad}");
            assert!(SearchCursor::decode(bad).is_err(), "{bad}");
        }
    }
}
