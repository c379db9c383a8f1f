//! The `grpc-timeout` header: gRPC's wire format for the time a caller
//! grants a call, parsed and formatted without allocating.
//!
//! The format (gRPC's "PROTOCOL-HTTP2" document): `TimeoutValue TimeoutUnit`,
//! where `TimeoutValue` is 1 to 8 ASCII digits and `TimeoutUnit` one of
//! `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds),
//! `u` (microseconds), `n` (nanoseconds). Nothing else is accepted: no sign,
//! no space, no ninth digit, no other unit.
//!
//! Formatting picks the finest unit whose count fits in 8 digits and rounds
//! the count *up* (as grpc-go does), so a remaining time is never sent as
//! shorter than it is; the error is below one unit of the chosen scale,
//! which is at most 1/100,000 of the time (one unit against at least
//! 99,999,999 units of the next finer scale ÷ 1,000). A time beyond the
//! format's largest value, 99,999,999 hours (over 11,000 years), is sent as
//! that value.

use core::fmt;
use core::time::Duration;

use http::HeaderValue;
use http::header::HeaderName;

/// The header's name, `grpc-timeout`.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest count the format allows: 8 digits.
const MAX_COUNT: u64 = 99_999_999;

/// The units, finest first: the letter and its length in nanoseconds.
const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

/// The largest timeout the format can carry: 99,999,999 hours.
pub const MAX_GRPC_TIMEOUT: Duration = Duration::from_secs(MAX_COUNT * 3_600);

/// Why a `grpc-timeout` value was rejected.
///
/// ```
/// use goctx_tower::parse_grpc_timeout;
///
/// let err = parse_grpc_timeout(b"100x").unwrap_err();
/// assert_eq!(err.to_string(), "malformed grpc-timeout: unknown unit 'x' (expected one of H M S m u n)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutError {
    /// The value is empty.
    Empty,
    /// The value has no digits before its unit (or is a unit alone).
    NoDigits,
    /// More than 8 digits.
    TooManyDigits,
    /// A byte that is not an ASCII digit where digits must be.
    NotADigit,
    /// The last byte is not one of `H M S m u n`.
    UnknownUnit(u8),
    /// The request carries more than one `grpc-timeout` header.
    Repeated,
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed grpc-timeout: ")?;
        match *self {
            TimeoutError::Empty => f.write_str("empty value"),
            TimeoutError::NoDigits => f.write_str("no digits before the unit"),
            TimeoutError::TooManyDigits => f.write_str("more than 8 digits"),
            TimeoutError::NotADigit => f.write_str("a byte that is not an ASCII digit"),
            TimeoutError::UnknownUnit(unit) if unit.is_ascii_graphic() => write!(
                f,
                "unknown unit '{}' (expected one of H M S m u n)",
                unit as char
            ),
            TimeoutError::UnknownUnit(unit) => write!(
                f,
                "unknown unit byte 0x{unit:02x} (expected one of H M S m u n)"
            ),
            TimeoutError::Repeated => f.write_str("more than one grpc-timeout header"),
        }
    }
}

impl std::error::Error for TimeoutError {}

/// Parses a `grpc-timeout` value (`"100m"`, `"5S"`, ...) into the time it
/// grants. Never panics: anything but 1 to 8 ASCII digits followed by one of
/// `H M S m u n` is a [`TimeoutError`].
///
/// ```
/// use goctx_tower::parse_grpc_timeout;
/// use std::time::Duration;
///
/// assert_eq!(parse_grpc_timeout(b"100m"), Ok(Duration::from_millis(100)));
/// assert_eq!(parse_grpc_timeout(b"2H"), Ok(Duration::from_secs(7200)));
/// assert!(parse_grpc_timeout(b"123456789n").is_err()); // 9 digits
/// assert!(parse_grpc_timeout(b"-1S").is_err());
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    let Some((&unit, digits)) = value.split_last() else {
        return Err(TimeoutError::Empty);
    };
    let Some(&(_, nanos_per_unit)) = UNITS.iter().find(|&&(letter, _)| letter == unit) else {
        return Err(TimeoutError::UnknownUnit(unit));
    };
    if digits.is_empty() {
        return Err(TimeoutError::NoDigits);
    }
    if digits.len() > 8 {
        return Err(TimeoutError::TooManyDigits);
    }
    let mut count: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(TimeoutError::NotADigit);
        }
        // At most 8 digits: the count stays below 10^8, no overflow.
        count = count * 10 + u64::from(digit - b'0');
    }
    // At most 99,999,999 × 3.6e12 ns < 3.6e20 ns: past u64 nanoseconds
    // (1.8e19), so hours and minutes are built from seconds.
    Ok(match unit {
        b'H' => Duration::from_secs(count * 3_600),
        b'M' => Duration::from_secs(count * 60),
        _ => Duration::from_nanos(count * nanos_per_unit),
    })
}

/// A formatted `grpc-timeout` value, kept on the stack: at most 8 digits
/// and a unit. [`format_grpc_timeout`] makes one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GrpcTimeout {
    bytes: [u8; 9],
    len: u8,
}

impl GrpcTimeout {
    /// The value as text, e.g. `"250m"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and unit letters are ever written.
        core::str::from_utf8(self.as_bytes()).expect("ASCII")
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The value as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).expect("digits and a unit letter are valid")
    }
}

impl fmt::Display for GrpcTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for GrpcTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GrpcTimeout").field(&self.as_str()).finish()
    }
}

/// Formats a remaining time as a `grpc-timeout` value: the finest unit whose
/// count fits in 8 digits, the count rounded up (a remaining time is never
/// sent as shorter than it is: the error is less than one unit of the
/// chosen scale). Beyond [`MAX_GRPC_TIMEOUT`], the value is
/// `99999999H`.
///
/// ```
/// use goctx_tower::{format_grpc_timeout, parse_grpc_timeout};
/// use std::time::Duration;
///
/// assert_eq!(format_grpc_timeout(Duration::from_millis(250)).as_str(), "250000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(3600)).as_str(), "3600000m");
/// // 1.5 s and 1 ns: 1,500,000,001 ns needs 10 digits, so microseconds, rounded up.
/// let t = format_grpc_timeout(Duration::new(1, 500_000_001));
/// assert_eq!(t.as_str(), "1500001u");
/// assert!(parse_grpc_timeout(t.as_bytes()).unwrap() >= Duration::new(1, 500_000_001));
/// ```
pub fn format_grpc_timeout(timeout: Duration) -> GrpcTimeout {
    let nanos = timeout.as_nanos();
    let (unit, count) = UNITS
        .iter()
        .find_map(|&(letter, nanos_per_unit)| {
            let count = nanos.div_ceil(u128::from(nanos_per_unit));
            (count <= u128::from(MAX_COUNT)).then_some((letter, count as u64))
        })
        .unwrap_or((b'H', MAX_COUNT));
    let mut bytes = [0u8; 9];
    let mut digits = [0u8; 8];
    let mut n = 0;
    let mut rest = count;
    loop {
        digits[n] = b'0' + (rest % 10) as u8;
        n += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (i, &digit) in digits[..n].iter().rev().enumerate() {
        bytes[i] = digit;
    }
    bytes[n] = unit;
    GrpcTimeout {
        bytes,
        len: (n + 1) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout(b"1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout(b"4m"), Ok(Duration::from_millis(4)));
        assert_eq!(parse_grpc_timeout(b"5u"), Ok(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(b"6n"), Ok(Duration::from_nanos(6)));
        assert_eq!(parse_grpc_timeout(b"0n"), Ok(Duration::ZERO));
        assert_eq!(parse_grpc_timeout(b"00000007S"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn parses_the_largest_values_without_overflow() {
        assert_eq!(parse_grpc_timeout(b"99999999H"), Ok(MAX_GRPC_TIMEOUT));
        assert_eq!(
            parse_grpc_timeout(b"99999999M"),
            Ok(Duration::from_secs(99_999_999 * 60))
        );
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Ok(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn rejects_malformed_values() {
        use TimeoutError::*;
        let cases: &[(&[u8], TimeoutError)] = &[
            (b"", Empty),
            (b"S", NoDigits),
            (b"100", UnknownUnit(b'0')),
            (b"100s", UnknownUnit(b's')),
            (b"100h", UnknownUnit(b'h')),
            (b"100 ", UnknownUnit(b' ')),
            (b"1\xffS", NotADigit),
            (b"100\xff", UnknownUnit(0xff)),
            (b"123456789S", TooManyDigits),
            (b"000000000n", TooManyDigits),
            (b"-1S", NotADigit),
            (b"+1S", NotADigit),
            (b" 1S", NotADigit),
            (b"1 S", NotADigit),
            (b"1.5S", NotADigit),
            (b"0x10S", NotADigit),
            (b"1SS", NotADigit),
        ];
        for &(input, expected) in cases {
            assert_eq!(
                parse_grpc_timeout(input),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn error_messages_are_header_safe() {
        // The rejection's message goes into a `grpc-message` header and a
        // body: printable ASCII only, whatever byte was sent.
        for byte in 0..=u8::MAX {
            let message = TimeoutError::UnknownUnit(byte).to_string();
            assert!(
                message.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{message:?}"
            );
        }
    }

    #[test]
    fn formats_the_finest_unit_that_fits() {
        let cases = [
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(1), "1n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_000), "100000u"),
            (Duration::from_nanos(100_000_001), "100001u"),
            (Duration::from_millis(100), "100000u"),
            (Duration::from_secs(1), "1000000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_secs(100_000), "100000S"),
            (Duration::from_secs(99_999_999), "99999999S"),
            (Duration::from_secs(100_000_000), "1666667M"),
            (Duration::from_secs(99_999_999 * 60), "99999999M"),
            (Duration::from_secs(99_999_999 * 60 + 1), "1666667H"),
            (MAX_GRPC_TIMEOUT, "99999999H"),
            (MAX_GRPC_TIMEOUT + Duration::from_nanos(1), "99999999H"),
            (Duration::MAX, "99999999H"),
        ];
        for (timeout, expected) in cases {
            assert_eq!(
                format_grpc_timeout(timeout).as_str(),
                expected,
                "{timeout:?}"
            );
        }
    }

    /// xorshift64*: deterministic, dependency-free inputs for the
    /// property-style tests below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A duration spread over every scale, from nanoseconds to past
        /// the format's largest value.
        fn duration(&mut self) -> Duration {
            // Up to 2^40 s, past the format's largest value (~2^38.4 s).
            let bits = self.next() % 41;
            let secs = if bits == 0 {
                0
            } else {
                self.next() >> (64 - bits)
            };
            Duration::new(secs, (self.next() % 1_000_000_000) as u32)
        }
    }

    /// The chosen unit's length.
    fn unit_of(timeout: &GrpcTimeout) -> Duration {
        let unit = *timeout.as_bytes().last().unwrap();
        let (_, nanos) = UNITS.iter().find(|(letter, _)| *letter == unit).unwrap();
        Duration::from_nanos(*nanos)
    }

    #[test]
    fn formatting_rounds_up_by_less_than_one_unit() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..100_000 {
            let timeout = rng.duration();
            let formatted = format_grpc_timeout(timeout);
            assert!((2..=9).contains(&formatted.as_bytes().len()));
            let parsed = parse_grpc_timeout(formatted.as_bytes()).expect("our own output parses");
            if timeout > MAX_GRPC_TIMEOUT {
                assert_eq!(parsed, MAX_GRPC_TIMEOUT);
                continue;
            }
            assert!(
                parsed >= timeout,
                "{timeout:?} -> {formatted} -> {parsed:?}"
            );
            assert!(
                parsed - timeout < unit_of(&formatted),
                "{timeout:?} -> {formatted} -> {parsed:?}"
            );
            // The relative error bound of the module docs.
            assert!(
                (parsed - timeout).as_nanos() * 100_000 <= timeout.as_nanos().max(1),
                "{timeout:?} -> {formatted} -> {parsed:?}"
            );
            // The finest unit that fits: one scale finer would need 9 digits.
            let finer = UNITS
                .iter()
                .position(|&(letter, _)| letter == *formatted.as_bytes().last().unwrap())
                .unwrap()
                .checked_sub(1);
            if let Some(finer) = finer {
                let count = timeout.as_nanos().div_ceil(u128::from(UNITS[finer].1));
                assert!(count > u128::from(MAX_COUNT), "{timeout:?} -> {formatted}");
            }
        }
    }

    #[test]
    fn every_wire_value_round_trips_exactly() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..100_000 {
            let digits = 1 + rng.next() % 8;
            let count = rng.next() % 10u64.pow(digits as u32);
            let unit = UNITS[(rng.next() % 6) as usize].0;
            let wire = format!("{count:0width$}{}", unit as char, width = digits as usize);
            let parsed = parse_grpc_timeout(wire.as_bytes()).unwrap();
            // Every unit divides the coarser ones, so what came off the wire
            // is formatted exactly (perhaps in a finer unit).
            let again = format_grpc_timeout(parsed);
            assert_eq!(
                parse_grpc_timeout(again.as_bytes()),
                Ok(parsed),
                "{wire} -> {again}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = Rng(42);
        let alphabet = b"0123456789HMSmun hsx-+.\xff\x00";
        for _ in 0..100_000 {
            let len = (rng.next() % 12) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(timeout) = parse_grpc_timeout(&input) {
                // Accepted only in the wire format.
                let (unit, digits) = input.split_last().unwrap();
                assert!(b"HMSmun".contains(unit), "{input:?}");
                assert!((1..=8).contains(&digits.len()), "{input:?}");
                assert!(digits.iter().all(u8::is_ascii_digit), "{input:?}");
                assert!(timeout <= MAX_GRPC_TIMEOUT);
            }
        }
    }
}
