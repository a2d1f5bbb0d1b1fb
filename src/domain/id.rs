//! Server-made identifiers.
//!
//! An id is a prefix (`ses_`, `msg_`) and 26 characters of lowercase Crockford base32 holding a
//! 128-bit value: 48 bits of milliseconds since the epoch, then 80 bits that start random and are
//! bumped by a random step inside one millisecond. The [`IdGenerator`] hands out strictly
//! increasing values, so ids sort by creation time and, because the single writer assigns them in
//! commit order, a later commit never gets a smaller id (which keeps keyset pages stable).
//!
//! Path ids are parsed, not validated: anything that is not of the form names nothing, and the
//! HTTP layer answers 404 for it without touching storage.

use std::fmt;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const ENCODED_LEN: usize = 26;
const RANDOM_BITS: u32 = 80;
const RANDOM_MASK: u128 = (1u128 << RANDOM_BITS) - 1;

/// Hands out strictly increasing `(timestamp_ms, value)` pairs.
///
/// The timestamp never goes backwards even when the wall clock does: it is the larger of the
/// clock and the last timestamp handed out, so `created_at` and id order always agree.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last_ms: i64,
    last_random: u128,
}

impl IdGenerator {
    /// A generator that will never hand out a timestamp below `floor_ms` (e.g. the newest
    /// timestamp already stored, so ids stay ordered across restarts even if the clock moved
    /// back while the server was down).
    pub fn starting_after(floor_ms: i64) -> Self {
        // The next millisecond: ids stored at `floor_ms` may hold any random part, so a new one
        // in that same millisecond could sort before them.
        IdGenerator {
            last_ms: floor_ms + 1,
            last_random: 0,
        }
    }

    /// The timestamp to use for a change happening now: monotonic, never below the last one.
    pub fn now(&mut self, wall_ms: i64) -> i64 {
        wall_ms.max(self.last_ms)
    }

    /// The next id value with its timestamp, for an event at `wall_ms`.
    pub fn next(&mut self, wall_ms: i64) -> (i64, u128) {
        let ms = wall_ms.max(self.last_ms);
        let random = if ms == self.last_ms {
            // Same millisecond: step forward by a random amount so ids stay ordered but are not
            // trivially guessable from their neighbours.
            let step = u128::from(fastrand::u32(1..=u32::MAX));
            let next = self.last_random + step;
            if next > RANDOM_MASK {
                // Exhausted this millisecond (needs ~2^48 ids): borrow the next one.
                self.last_ms = ms + 1;
                self.last_random = fastrand::u128(..) & (RANDOM_MASK >> 1);
                return (self.last_ms, self.value());
            }
            next
        } else {
            // Leave headroom so the in-millisecond steps cannot overflow in practice.
            fastrand::u128(..) & (RANDOM_MASK >> 1)
        };
        self.last_ms = ms;
        self.last_random = random;
        (ms, self.value())
    }

    fn value(&self) -> u128 {
        ((self.last_ms as u128) << RANDOM_BITS) | self.last_random
    }
}

/// Current wall-clock time in milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random 26-character token (request ids and the like).
pub fn random_token() -> String {
    encode(fastrand::u128(..), "")
}

/// [`random_token`] as bytes, made without an allocation (a request id per request).
pub fn random_token_bytes() -> [u8; ENCODED_LEN] {
    digits(fastrand::u128(..))
}

/// `value` as its 26 digits, most significant first.
fn digits(value: u128) -> [u8; ENCODED_LEN] {
    let mut out = [0; ENCODED_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        let digit = (value >> ((ENCODED_LEN - 1 - i) * 5)) & 0x1f;
        *byte = ALPHABET[digit as usize];
    }
    out
}

fn encode(value: u128, prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + ENCODED_LEN);
    out.push_str(prefix);
    // The digits are ASCII.
    out.extend(digits(value).iter().map(|&b| b as char));
    out
}

/// `IS_DIGIT[b]`: whether byte `b` is one of the 32 digits (a table: parsing is per request).
const IS_DIGIT: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

fn is_encoded(body: &str) -> bool {
    body.len() == ENCODED_LEN
        // The first digit carries only 3 bits (128 = 25*5 + 3).
        && body.as_bytes()[0] <= b'7'
        && body.bytes().all(|b| IS_DIGIT[b as usize])
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Builds the id for a generator value.
            pub fn from_value(value: u128) -> Self {
                $name(encode(value, Self::PREFIX))
            }

            /// Parses an id given by a client; `None` when it cannot name anything.
            pub fn parse(raw: &str) -> Option<Self> {
                let body = raw.strip_prefix(Self::PREFIX)?;
                is_encoded(body).then(|| $name(raw.to_owned()))
            }

            /// Wraps an id read back from storage, which only ever holds ids this type made.
            pub fn from_trusted(raw: String) -> Self {
                $name(raw)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// `ses_…`: a session id.
    SessionId,
    "ses_"
);
id_type!(
    /// `msg_…`: a message id.
    MessageId,
    "msg_"
);
id_type!(
    /// `whk_…`: a webhook endpoint id.
    WebhookId,
    "whk_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strictly_increasing_within_and_across_milliseconds() {
        let mut generator = IdGenerator::default();
        let mut last = String::new();
        for i in 0..10_000 {
            let wall = 1_763_800_000_000 + i / 1000;
            let (_, value) = generator.next(wall);
            let id = SessionId::from_value(value).into_string();
            assert!(id > last, "{id} should sort after {last}");
            last = id;
        }
    }

    #[test]
    fn after_a_restart_ids_sort_after_everything_stored_even_if_the_clock_went_back() {
        let mut before = IdGenerator::default();
        let stored: Vec<u128> = (0..100).map(|_| before.next(5_000).1).collect();
        let newest = *stored.iter().max().unwrap();
        // Restart with the clock behind the newest stored timestamp.
        let mut after = IdGenerator::starting_after(5_000);
        let (ms, value) = after.next(4_000);
        assert!(ms > 5_000);
        assert!(value > newest);
    }

    #[test]
    fn token_bytes_encode_a_value_as_ids_do() {
        for _ in 0..100 {
            let bytes = random_token_bytes();
            let token = std::str::from_utf8(&bytes).unwrap();
            assert!(is_encoded(token), "{token}");
        }
        fastrand::seed(7);
        let expected = encode(fastrand::u128(..), "");
        fastrand::seed(7);
        assert_eq!(random_token_bytes(), expected.as_bytes());
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut generator = IdGenerator::default();
        let (a, _) = generator.next(2_000);
        let (b, _) = generator.next(1_000);
        assert_eq!(a, 2_000);
        assert_eq!(b, 2_000);
        assert_eq!(generator.now(1_500), 2_000);
    }

    #[test]
    fn parse_accepts_only_well_formed_ids() {
        let mut generator = IdGenerator::default();
        let (_, value) = generator.next(1_763_800_000_000);
        let id = MessageId::from_value(value);
        assert_eq!(MessageId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(SessionId::parse(id.as_str()), None);
        assert_eq!(MessageId::parse("msg_"), None);
        assert_eq!(MessageId::parse("msg_../../etc/passwd"), None);
        assert_eq!(MessageId::parse(&id.as_str().to_uppercase()), None);
        assert_eq!(MessageId::parse("msg_zzzzzzzzzzzzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn timestamp_is_recoverable_from_the_leading_digits() {
        let mut generator = IdGenerator::default();
        let (ms, value) = generator.next(1_763_800_000_000);
        assert_eq!((value >> RANDOM_BITS) as i64, ms);
    }
}
