//! A `serde::Serializer` that writes RFC 8785 (JCS) bytes as it goes.
//!
//! Values are written straight into a buffer that is handed to a [`Sink`]
//! (SHA-256, or a `Vec` for [`super::canonical_json`]) whenever no object is
//! open. An object's members are written in the order they come and, when
//! that order is not JCS's (keys by UTF-16 code units), moved into place
//! when the object closes; so what is held back is at most the outermost
//! open object. No `serde_json::Value` tree is built.

use std::cmp::Ordering;
use std::fmt::Display;

use serde::ser::{self, Error as _, Impossible, Serialize};

/// What the serializer reports: serde_json's error type, so callers keep
/// [`crate::Error::Serialization`]'s source.
pub(crate) type JcsError = serde_json::Error;

/// Where finished bytes go.
pub(crate) trait Sink {
    fn write(&mut self, bytes: &[u8]);
}

impl Sink for sha2::Sha256 {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        sha2::Digest::update(self, bytes);
    }
}

impl Sink for Vec<u8> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Bytes held before they are passed on while no object is open.
const FLUSH_AT: usize = 16 * 1024;

/// serde_json's private names for `Number` under `arbitrary_precision` and
/// for `RawValue`: values that must be read as JSON, not as structs.
const SERDE_JSON_NUMBER: &str = "$serde_json::private::Number";
const SERDE_JSON_RAW_VALUE: &str = "$serde_json::private::RawValue";

/// One written member of an open object: its key (in `keys`) and its bytes
/// (in `buf`, without the comma before it).
#[derive(Clone, Copy)]
struct Member {
    key_start: usize,
    key_end: usize,
    /// The key is a struct field's name (then it is not copied to `keys`).
    field: Option<&'static str>,
    start: usize,
    end: usize,
}

/// An open object: where its members start in `buf`, `members` and `keys`.
struct Frame {
    body_start: usize,
    first_member: usize,
    keys_start: usize,
    /// The member being written (its `end` is not known yet).
    pending: Option<Member>,
}

/// The writer's working memory, kept per thread between fingerprints so a
/// call allocates nothing once warm.
#[derive(Default)]
struct Buffers {
    buf: Vec<u8>,
    keys: String,
    members: Vec<Member>,
    frames: Vec<Frame>,
    scratch: Vec<u8>,
    order: Vec<usize>,
    /// Kept between fingerprints: the orders of struct fields seen.
    known: Vec<KnownOrder>,
}

thread_local! {
    static SPARE: std::cell::Cell<Option<Box<Buffers>>> = const { std::cell::Cell::new(None) };
}

/// Buffers larger than this go back to the allocator, not to the thread.
const KEEP_AT_MOST: usize = 1 << 20;

/// [`Buffers`] borrowed from the thread, returned (emptied) when dropped.
struct Pooled(Box<Buffers>);

impl Pooled {
    fn take() -> Self {
        Pooled(
            SPARE
                .try_with(std::cell::Cell::take)
                .ok()
                .flatten()
                .unwrap_or_default(),
        )
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let b = &mut *self.0;
        let held = b.buf.capacity()
            + b.scratch.capacity()
            + b.keys.capacity()
            + b.members.capacity() * std::mem::size_of::<Member>()
            + b.order.capacity() * std::mem::size_of::<usize>();
        if held > KEEP_AT_MOST {
            return;
        }
        b.buf.clear();
        b.keys.clear();
        b.members.clear();
        b.frames.clear();
        b.scratch.clear();
        b.order.clear();
        let spare = std::mem::take(&mut self.0);
        // During thread teardown the slot may be gone: then just free.
        let _ = SPARE.try_with(|slot| slot.set(Some(spare)));
    }
}

impl std::ops::Deref for Pooled {
    type Target = Buffers;
    fn deref(&self) -> &Buffers {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Buffers {
        &mut self.0
    }
}

/// The JCS writer.
pub(crate) struct Jcs<S: Sink> {
    b: Pooled,
    sink: S,
    /// Writes a number that has no double value (`1e400` under serde_json's
    /// `arbitrary_precision`) as its text instead of failing.
    lenient: bool,
}

impl<S: Sink> Jcs<S> {
    pub(crate) fn new(sink: S) -> Self {
        Jcs {
            b: Pooled::take(),
            sink,
            lenient: false,
        }
    }

    /// A writer that keeps the text of numbers RFC 8785 cannot write.
    pub(crate) fn lenient(sink: S) -> Self {
        Jcs {
            lenient: true,
            ..Jcs::new(sink)
        }
    }

    /// Writes raw bytes (punctuation between values).
    #[inline]
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.b.buf.extend_from_slice(bytes);
    }

    /// Passes the buffer on when no object needs its members held back.
    #[inline]
    pub(crate) fn maybe_flush(&mut self) {
        if self.b.frames.is_empty() && self.b.buf.len() >= FLUSH_AT {
            self.sink.write(&self.b.buf);
            self.b.buf.clear();
        }
    }

    /// Passes everything on and returns the sink.
    pub(crate) fn into_sink(self) -> S {
        let Jcs { b, mut sink, .. } = self;
        sink.write(&b.buf);
        sink
    }

    /// Fails when a value returned `Ok` with an object still open (a
    /// `Serialize` impl that swallowed an error half-way).
    pub(crate) fn check_closed(&self) -> Result<(), JcsError> {
        if self.b.frames.is_empty() {
            Ok(())
        } else {
            Err(JcsError::custom(
                "the value's Serialize impl returned Ok with a map still open",
            ))
        }
    }

    /// Forgets a value that failed half-way (the caller reports the error
    /// and writes nothing more).
    pub(crate) fn abandon(&mut self) {
        self.b.frames.clear();
        self.b.members.clear();
        self.b.keys.clear();
    }

    fn open_object(&mut self) {
        let b = &mut *self.b;
        b.buf.push(b'{');
        b.frames.push(Frame {
            body_start: b.buf.len(),
            first_member: b.members.len(),
            keys_start: b.keys.len(),
            pending: None,
        });
    }

    /// Writes a member's key and colon: a struct field's name, or the key
    /// written to `keys` from `key_start`.
    fn begin_member(
        &mut self,
        key_start: usize,
        field: Option<&'static str>,
    ) -> Result<(), JcsError> {
        let b = &mut *self.b;
        let Some(frame) = b.frames.last_mut() else {
            return Err(JcsError::custom("a map value came without an open map"));
        };
        if b.members.len() > frame.first_member {
            b.buf.push(b',');
        }
        frame.pending = Some(Member {
            key_start,
            key_end: b.keys.len(),
            field,
            start: b.buf.len(),
            end: 0,
        });
        write_string(&mut b.buf, field.unwrap_or(&b.keys[key_start..]));
        b.buf.push(b':');
        Ok(())
    }

    fn end_member(&mut self) -> Result<(), JcsError> {
        let b = &mut *self.b;
        let Some(mut member) = b.frames.last_mut().and_then(|f| f.pending.take()) else {
            return Err(JcsError::custom("a map value came without its key"));
        };
        member.end = b.buf.len();
        b.members.push(member);
        Ok(())
    }

    /// Closes the innermost object: its members into JCS order, then `}`.
    fn close_object(&mut self) -> Result<(), JcsError> {
        let b = &mut *self.b;
        let Some(frame) = b.frames.pop() else {
            return Err(JcsError::custom("a map ended that was not open"));
        };
        if frame.pending.is_some() {
            return Err(JcsError::custom("a map key came without its value"));
        }
        let members = &b.members[frame.first_member..];
        // A struct's fields come in the same order every time: their order
        // is worked out once per thread and field list.
        let cacheable = members.len() > 1 && members.iter().all(|m| m.field.is_some());
        let known = if cacheable {
            b.known.iter().find(|k| k.matches(members))
        } else {
            None
        };
        let in_order = match known {
            Some(known) => match &known.order {
                None => true,
                Some(order) => {
                    b.order.clear();
                    b.order.extend_from_slice(order);
                    false
                }
            },
            None => {
                let in_order = sort_members(members, &b.keys, &mut b.order)?;
                if cacheable {
                    if b.known.len() >= KNOWN_ORDERS {
                        b.known.clear();
                    }
                    b.known.push(KnownOrder {
                        fields: members.iter().filter_map(|m| m.field).collect(),
                        order: (!in_order).then(|| b.order.clone()),
                    });
                }
                in_order
            }
        };
        if !in_order {
            b.scratch.clear();
            b.scratch.extend_from_slice(&b.buf[frame.body_start..]);
            b.buf.truncate(frame.body_start);
            for (i, &index) in b.order.iter().enumerate() {
                if i > 0 {
                    b.buf.push(b',');
                }
                let m = &members[index];
                b.buf.extend_from_slice(
                    &b.scratch[m.start - frame.body_start..m.end - frame.body_start],
                );
            }
        }
        b.buf.push(b'}');
        b.members.truncate(frame.first_member);
        b.keys.truncate(frame.keys_start);
        Ok(())
    }

    fn write_f64(&mut self, value: f64) -> Result<(), JcsError> {
        write_f64(&mut self.b.buf, value)
    }

    /// A number in JSON text (serde_json's `arbitrary_precision` form):
    /// integers exactly, anything else as the double it denotes.
    fn write_number_text(&mut self, text: &str) -> Result<(), JcsError> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let digits = digits.trim_start_matches('0');
            if digits.is_empty() {
                self.b.buf.push(b'0');
            } else {
                if negative {
                    self.b.buf.push(b'-');
                }
                self.b.buf.extend_from_slice(digits.as_bytes());
            }
            return Ok(());
        }
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => self.write_f64(value),
            _ if self.lenient => {
                self.b.buf.extend_from_slice(text.as_bytes());
                Ok(())
            }
            _ => Err(JcsError::custom(format_args!(
                "the number {text} has no finite double value, so RFC 8785 cannot write it"
            ))),
        }
    }
}

/// How many struct field orders each thread remembers.
const KNOWN_ORDERS: usize = 64;

/// The JCS order of one struct's field list, by the fields' addresses: the
/// same `&'static str`s in the same sequence are the same keys.
struct KnownOrder {
    fields: Vec<&'static str>,
    /// `None` when the fields already come in JCS order.
    order: Option<Vec<usize>>,
}

impl KnownOrder {
    fn matches(&self, members: &[Member]) -> bool {
        self.fields.len() == members.len()
            && self.fields.iter().zip(members).all(|(field, m)| {
                m.field.is_some_and(|f| {
                    std::ptr::eq(f.as_ptr(), field.as_ptr()) && f.len() == field.len()
                })
            })
    }
}

/// Checks that the keys of `members` are distinct and puts their JCS order
/// into `order`; says whether they already were in it.
fn sort_members(members: &[Member], keys: &str, order: &mut Vec<usize>) -> Result<bool, JcsError> {
    let key = |m: &Member| m.field.unwrap_or(&keys[m.key_start..m.key_end]);
    // Keys with a character at or above U+E000, where UTF-8 and UTF-16
    // order can differ, are compared the slow way.
    let any_high = members
        .iter()
        .any(|m| key(m).bytes().any(|byte| byte >= 0xEE));
    let cmp = |x: &Member, y: &Member| {
        if any_high {
            utf16_cmp(key(x), key(y))
        } else {
            bytes_cmp(key(x).as_bytes(), key(y).as_bytes())
        }
    };
    let mut in_order = true;
    for pair in members.windows(2) {
        match cmp(&pair[0], &pair[1]) {
            Ordering::Less => {}
            Ordering::Equal => return Err(duplicate_key(key(&pair[0]))),
            Ordering::Greater => in_order = false,
        }
    }
    if in_order {
        return Ok(true);
    }
    order.clear();
    order.extend(0..members.len());
    if members.len() <= 16 {
        // A struct's handful of fields: insertion sort, no calls.
        for i in 1..order.len() {
            let mut j = i;
            while j > 0 && cmp(&members[order[j - 1]], &members[order[j]]).is_gt() {
                order.swap(j - 1, j);
                j -= 1;
            }
        }
    } else {
        order.sort_unstable_by(|&x, &y| cmp(&members[x], &members[y]));
    }
    for pair in order.windows(2) {
        let (x, y) = (key(&members[pair[0]]), key(&members[pair[1]]));
        if x == y {
            return Err(duplicate_key(x));
        }
    }
    Ok(false)
}

/// Byte order of two short keys, inline (keys usually differ early, where
/// a call to `memcmp` costs more than the comparison).
#[inline]
fn bytes_cmp(a: &[u8], b: &[u8]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// Compares two strings by their UTF-16 code units, as RFC 8785 sorts keys.
///
/// UTF-8 bytes order strings by code point; UTF-16 differs only where a
/// character above U+FFFF (a surrogate pair, D800..DFFF) meets one in
/// U+E000..U+FFFF, so only the first differing characters are looked at.
pub(crate) fn utf16_cmp(a: &str, b: &str) -> Ordering {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let Some(at) = ab.iter().zip(bb).position(|(x, y)| x != y) else {
        return ab.len().cmp(&bb.len());
    };
    // Back up to the start of the character that differs (same in both).
    let mut start = at;
    while start > 0 && !a.is_char_boundary(start) {
        start -= 1;
    }
    match (a[start..].chars().next(), b[start..].chars().next()) {
        (Some(x), Some(y)) => utf16_unit(x).cmp(&utf16_unit(y)).then(x.cmp(&y)),
        _ => ab.len().cmp(&bb.len()),
    }
}

/// The first UTF-16 code unit of a character.
fn utf16_unit(c: char) -> u32 {
    let c = u32::from(c);
    if c >= 0x1_0000 {
        0xD800 + ((c - 0x1_0000) >> 10)
    } else {
        c
    }
}

fn duplicate_key(key: &str) -> JcsError {
    JcsError::custom(format_args!(
        "the object has the key {key:?} twice; RFC 8785 (I-JSON) needs unique keys"
    ))
}

fn non_finite(value: impl Display) -> JcsError {
    JcsError::custom(format_args!(
        "the float {value} has no JSON form (RFC 8785 has no NaN or infinity); \
         turn it into a number, a string or null before fingerprinting"
    ))
}

/// A finite double as ECMAScript's `Number.prototype.toString` writes it.
fn write_f64(buf: &mut Vec<u8>, value: f64) -> Result<(), JcsError> {
    if !value.is_finite() {
        return Err(non_finite(value));
    }
    if value == 0.0 {
        // -0 too.
        buf.push(b'0');
    } else {
        buf.extend_from_slice(ryu_js::Buffer::new().format_finite(value).as_bytes());
    }
    Ok(())
}

/// An `f32` is the double nearest its shortest decimal form, the number
/// serde_json writes for it (`0.1f32` is `0.1`, not `0.10000000149011612`).
fn f32_as_f64(value: f32) -> Result<f64, JcsError> {
    if !value.is_finite() {
        return Err(non_finite(value));
    }
    if value == 0.0 {
        return Ok(0.0);
    }
    ryu_js::Buffer::new()
        .format_finite(value)
        .parse::<f64>()
        .map_err(JcsError::custom)
}

/// Decimal digits of an integer.
#[inline]
fn write_u128(buf: &mut Vec<u8>, mut n: u128) {
    let mut digits = [0u8; 39];
    let mut at = digits.len();
    loop {
        at -= 1;
        // The remainder is below 10.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

#[inline]
fn write_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

#[inline]
fn write_i64(buf: &mut Vec<u8>, n: i64) {
    if n < 0 {
        buf.push(b'-');
    }
    write_u64(buf, n.unsigned_abs());
}

/// What each byte becomes inside a JSON string: 0 stays, `u` is `\u00XX`,
/// anything else is the letter after a backslash.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether any of eight bytes is a control character, `"` or `\`.
#[inline]
fn needs_escape(word: u64) -> bool {
    let zero = |v: u64| v.wrapping_sub(LOW) & !v & HIGH;
    let control = word.wrapping_sub(LOW * 0x20) & !word & HIGH;
    (control | zero(word ^ (LOW * u64::from(b'"'))) | zero(word ^ (LOW * u64::from(b'\\')))) != 0
}

/// A JSON string with RFC 8785's escaping: `\b \t \n \f \r \" \\`, other
/// control characters as `\u00xx` (lowercase), everything else as is.
fn write_string(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // 32 bytes at a time without an early exit, which compiles to
        // vector compares; then eight at a time; then byte by byte.
        if let Some(chunk) = bytes[i..].first_chunk::<32>() {
            let mut special = false;
            for &byte in chunk {
                special |= (byte < 0x20) | (byte == b'"') | (byte == b'\\');
            }
            if !special {
                i += 32;
                continue;
            }
        }
        if let Some(chunk) = bytes[i..].first_chunk::<8>()
            && !needs_escape(u64::from_le_bytes(*chunk))
        {
            i += 8;
            continue;
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            let escape = ESCAPE[usize::from(b)];
            if escape != 0 {
                buf.extend_from_slice(&bytes[start..i]);
                buf.push(b'\\');
                buf.push(escape);
                if escape == b'u' {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    buf.extend_from_slice(b"00");
                    buf.push(HEX[usize::from(b >> 4)]);
                    buf.push(HEX[usize::from(b & 0x0f)]);
                }
                start = i + 1;
            }
            i += 1;
        }
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

impl<'a, S: Sink> ser::Serializer for &'a mut Jcs<S> {
    type Ok = ();
    type Error = JcsError;
    type SerializeSeq = Seq<'a, S>;
    type SerializeTuple = Seq<'a, S>;
    type SerializeTupleStruct = Seq<'a, S>;
    type SerializeTupleVariant = Seq<'a, S>;
    type SerializeMap = Object<'a, S>;
    type SerializeStruct = Struct<'a, S>;
    type SerializeStructVariant = Object<'a, S>;

    fn serialize_bool(self, v: bool) -> Result<(), JcsError> {
        self.raw(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), JcsError> {
        write_i64(&mut self.b.buf, i64::from(v));
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), JcsError> {
        write_i64(&mut self.b.buf, i64::from(v));
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), JcsError> {
        write_i64(&mut self.b.buf, i64::from(v));
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), JcsError> {
        write_i64(&mut self.b.buf, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), JcsError> {
        if v < 0 {
            self.b.buf.push(b'-');
        }
        write_u128(&mut self.b.buf, v.unsigned_abs());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), JcsError> {
        write_u64(&mut self.b.buf, u64::from(v));
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), JcsError> {
        write_u64(&mut self.b.buf, u64::from(v));
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), JcsError> {
        write_u64(&mut self.b.buf, u64::from(v));
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), JcsError> {
        write_u64(&mut self.b.buf, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), JcsError> {
        write_u128(&mut self.b.buf, v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), JcsError> {
        let v = f32_as_f64(v)?;
        self.write_f64(v)
    }
    fn serialize_f64(self, v: f64) -> Result<(), JcsError> {
        self.write_f64(v)
    }
    fn serialize_char(self, v: char) -> Result<(), JcsError> {
        write_string(&mut self.b.buf, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), JcsError> {
        write_string(&mut self.b.buf, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), JcsError> {
        // As serde_json writes bytes: an array of numbers.
        self.b.buf.push(b'[');
        for (i, &b) in v.iter().enumerate() {
            if i > 0 {
                self.b.buf.push(b',');
            }
            write_u64(&mut self.b.buf, u64::from(b));
        }
        self.b.buf.push(b']');
        Ok(())
    }
    fn serialize_none(self) -> Result<(), JcsError> {
        self.raw(b"null");
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), JcsError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), JcsError> {
        self.raw(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), JcsError> {
        self.raw(b"null");
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), JcsError> {
        write_string(&mut self.b.buf, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        // `{"Variant":value}`: one member, nothing to order.
        self.b.buf.push(b'{');
        write_string(&mut self.b.buf, variant);
        self.b.buf.push(b':');
        value.serialize(&mut *self)?;
        self.b.buf.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a, S>, JcsError> {
        self.b.buf.push(b'[');
        Ok(Seq {
            w: self,
            first: true,
            close: b"]",
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a, S>, JcsError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Seq<'a, S>, JcsError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Seq<'a, S>, JcsError> {
        self.b.buf.push(b'{');
        write_string(&mut self.b.buf, variant);
        self.b.buf.extend_from_slice(b":[");
        Ok(Seq {
            w: self,
            first: true,
            close: b"]}",
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a, S>, JcsError> {
        self.open_object();
        Ok(Object {
            w: self,
            close: b"",
        })
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Struct<'a, S>, JcsError> {
        Ok(match name {
            SERDE_JSON_NUMBER => Struct::Number(self),
            SERDE_JSON_RAW_VALUE => Struct::RawValue(self),
            _ => {
                self.open_object();
                Struct::Object(Object {
                    w: self,
                    close: b"",
                })
            }
        })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a, S>, JcsError> {
        self.b.buf.push(b'{');
        write_string(&mut self.b.buf, variant);
        self.b.buf.push(b':');
        self.open_object();
        Ok(Object {
            w: self,
            close: b"}",
        })
    }
}

/// An array being written (also a tuple variant's array).
pub(crate) struct Seq<'a, S: Sink> {
    w: &'a mut Jcs<S>,
    first: bool,
    close: &'static [u8],
}

impl<S: Sink> Seq<'_, S> {
    fn element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), JcsError> {
        if !self.first {
            self.w.b.buf.push(b',');
        }
        self.first = false;
        value.serialize(&mut *self.w)?;
        self.w.maybe_flush();
        Ok(())
    }
    fn finish(self) -> Result<(), JcsError> {
        self.w.raw(self.close);
        Ok(())
    }
}

/// serde's four array-like traits, all writing elements of one array.
macro_rules! seq_impls {
    ($($trait:ident :: $method:ident),+) => {$(
        impl<S: Sink> ser::$trait for Seq<'_, S> {
            type Ok = ();
            type Error = JcsError;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), JcsError> {
                self.element(value)
            }
            fn end(self) -> Result<(), JcsError> {
                self.finish()
            }
        }
    )+};
}

seq_impls!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// An object being written (a map, a struct, a struct variant's fields).
pub(crate) struct Object<'a, S: Sink> {
    w: &'a mut Jcs<S>,
    /// What follows the object's `}` (a struct variant's own `}`).
    close: &'static [u8],
}

impl<S: Sink> Object<'_, S> {
    fn key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), JcsError> {
        let start = self.w.b.keys.len();
        key.serialize(KeyWriter {
            keys: &mut self.w.b.keys,
        })?;
        self.w.begin_member(start, None)
    }
    fn value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), JcsError> {
        value.serialize(&mut *self.w)?;
        self.w.end_member()
    }
    fn field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        let start = self.w.b.keys.len();
        self.w.begin_member(start, Some(key))?;
        self.value(value)
    }
    fn finish(self) -> Result<(), JcsError> {
        self.w.close_object()?;
        self.w.raw(self.close);
        Ok(())
    }
}

impl<S: Sink> ser::SerializeMap for Object<'_, S> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), JcsError> {
        self.key(key)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), JcsError> {
        self.value(value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

impl<S: Sink> ser::SerializeStructVariant for Object<'_, S> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), JcsError> {
        self.finish()
    }
}

/// A struct: an object, or one of serde_json's private number forms.
pub(crate) enum Struct<'a, S: Sink> {
    Object(Object<'a, S>),
    /// `serde_json::Number` under `arbitrary_precision`: its text.
    Number(&'a mut Jcs<S>),
    /// `serde_json::value::RawValue`: JSON text to canonicalize.
    RawValue(&'a mut Jcs<S>),
}

impl<S: Sink> ser::SerializeStruct for Struct<'_, S> {
    type Ok = ();
    type Error = JcsError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        match self {
            Struct::Object(object) => object.field(key, value),
            Struct::Number(w) => w.write_number_text(&text_of(value)?),
            Struct::RawValue(w) => {
                let text = text_of(value)?;
                let parsed: RawJson = serde_json::from_str(&text)?;
                parsed.write(w)
            }
        }
    }
    fn end(self) -> Result<(), JcsError> {
        match self {
            Struct::Object(object) => object.finish(),
            Struct::Number(_) | Struct::RawValue(_) => Ok(()),
        }
    }
}

/// JSON text parsed for canonicalization with every member kept, so that a
/// key given twice is reported instead of the last one silently winning (as
/// in a `serde_json::Value`).
enum RawJson {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    /// A number under serde_json's `arbitrary_precision`: its text.
    NumberText(String),
    String(String),
    Array(Vec<RawJson>),
    Object(Vec<(String, RawJson)>),
}

impl<'de> serde::Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawJsonVisitor)
    }
}

struct RawJsonVisitor;

impl<'de> serde::de::Visitor<'de> for RawJsonVisitor {
    type Value = RawJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<RawJson, E> {
        Ok(RawJson::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawJson, E> {
        Ok(RawJson::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawJson, E> {
        Ok(RawJson::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RawJson, E> {
        Ok(RawJson::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawJson, E> {
        serde_json::Number::from_f64(v)
            .map(RawJson::Number)
            .ok_or_else(|| E::custom("a JSON number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawJson, E> {
        Ok(RawJson::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawJson, E> {
        Ok(RawJson::String(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawJson, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawJson::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawJson, A::Error> {
        // serde_json hands an `arbitrary_precision` number over as a map
        // with one private key; `Number` reads it back from its text.
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == SERDE_JSON_NUMBER {
                return Ok(RawJson::NumberText(map.next_value()?));
            }
            members.push((key, map.next_value()?));
        }
        Ok(RawJson::Object(members))
    }
}

impl RawJson {
    /// Writes this value as JCS (a key given twice is an error there).
    fn write<S: Sink>(&self, w: &mut Jcs<S>) -> Result<(), JcsError> {
        use ser::Serializer as _;
        match self {
            RawJson::Null => w.serialize_unit(),
            RawJson::Bool(v) => w.serialize_bool(*v),
            RawJson::Number(n) => n.serialize(w),
            RawJson::NumberText(text) => w.write_number_text(text),
            RawJson::String(v) => w.serialize_str(v),
            RawJson::Array(items) => {
                w.raw(b"[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        w.raw(b",");
                    }
                    item.write(w)?;
                }
                w.raw(b"]");
                Ok(())
            }
            RawJson::Object(members) => {
                w.open_object();
                for (key, value) in members {
                    let start = w.b.keys.len();
                    w.b.keys.push_str(key);
                    w.begin_member(start, None)?;
                    value.write(w)?;
                    w.end_member()?;
                }
                w.close_object()
            }
        }
    }
}

fn key_must_be_a_string() -> JcsError {
    JcsError::custom(
        "an object key must be a string (or a number, a bool, a char or a unit variant, \
         written as a string); this one is not",
    )
}

/// Writes a map key's text, as serde_json turns keys into strings.
struct KeyWriter<'k> {
    keys: &'k mut String,
}

impl KeyWriter<'_> {
    fn digits(self, negative: bool, n: u128) -> Result<(), JcsError> {
        if negative {
            self.keys.push('-');
        }
        self.keys.push_str(&n.to_string());
        Ok(())
    }
}

/// Float map keys are refused: the string serde_json makes of one (`"1.0"`)
/// is its own formatter's choice, which has changed between versions, so it
/// cannot be part of a fingerprint that must not change.
fn float_key() -> JcsError {
    JcsError::custom(
        "a float map key has no canonical string form; key the map by strings or integers",
    )
}

impl ser::Serializer for KeyWriter<'_> {
    type Ok = ();
    type Error = JcsError;
    type SerializeSeq = Impossible<(), JcsError>;
    type SerializeTuple = Impossible<(), JcsError>;
    type SerializeTupleStruct = Impossible<(), JcsError>;
    type SerializeTupleVariant = Impossible<(), JcsError>;
    type SerializeMap = Impossible<(), JcsError>;
    type SerializeStruct = Impossible<(), JcsError>;
    type SerializeStructVariant = Impossible<(), JcsError>;

    fn serialize_str(self, v: &str) -> Result<(), JcsError> {
        self.keys.push_str(v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), JcsError> {
        self.keys.push(v);
        Ok(())
    }
    fn serialize_bool(self, v: bool) -> Result<(), JcsError> {
        self.keys.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), JcsError> {
        self.serialize_i128(i128::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), JcsError> {
        self.serialize_i128(i128::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), JcsError> {
        self.serialize_i128(i128::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), JcsError> {
        self.serialize_i128(i128::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<(), JcsError> {
        self.digits(v < 0, v.unsigned_abs())
    }
    fn serialize_u8(self, v: u8) -> Result<(), JcsError> {
        self.digits(false, u128::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), JcsError> {
        self.digits(false, u128::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), JcsError> {
        self.digits(false, u128::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), JcsError> {
        self.digits(false, u128::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<(), JcsError> {
        self.digits(false, v)
    }
    fn serialize_f32(self, _v: f32) -> Result<(), JcsError> {
        Err(float_key())
    }
    fn serialize_f64(self, _v: f64) -> Result<(), JcsError> {
        Err(float_key())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _value: &T) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), JcsError> {
        self.keys.push_str(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), JcsError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, JcsError> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, JcsError> {
        Err(key_must_be_a_string())
    }
}

/// The string inside serde_json's private number and raw-value structs.
fn text_of<T: ?Sized + Serialize>(value: &T) -> Result<String, JcsError> {
    match serde_json::to_value(value)? {
        serde_json::Value::String(text) => Ok(text),
        _ => Err(JcsError::custom(
            "serde_json's private number or raw value did not hold text",
        )),
    }
}
