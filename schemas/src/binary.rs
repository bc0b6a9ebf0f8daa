//! Avro binary primitives for hand-written decoders of the contract's records (the sink's
//! EnrichedFlow → RowBinary path, the enricher's RawFlow path): the kind of each field as a
//! writer schema says, and a reader over a datum that declines (`None`) rather than guesses, so
//! that a caller can fall back to apache-avro for anything it does not accept exactly; and the
//! bound check run before apache-avro reads a datum ([`length_past_end`]), which allocates
//! every string as long as its length says.

use std::net::Ipv6Addr;

/// How one field of the writer schema is encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    /// Enum with its symbols.
    Enum(Vec<String>),
    Fixed(usize),
    Union(Vec<Kind>),
    /// Array with its items' kind.
    Array(Box<Kind>),
    /// Record with its fields' kinds.
    Record(Vec<Kind>),
}

/// The kind of a (writer) schema; `named` collects the named types defined so far, so that a
/// reference resolves to the definition met earlier in document order.
pub fn kind(s: &apache_avro::Schema, named: &mut Vec<(String, Kind)>) -> Option<Kind> {
    use apache_avro::Schema;
    Some(match s {
        Schema::Null => Kind::Null,
        Schema::Boolean => Kind::Bool,
        Schema::Int => Kind::Int,
        Schema::Long => Kind::Long,
        Schema::Float => Kind::Float,
        Schema::Double => Kind::Double,
        Schema::Bytes => Kind::Bytes,
        Schema::String => Kind::Str,
        Schema::Enum(e) => {
            let k = Kind::Enum(e.symbols.clone());
            named.push((e.name.fullname(None), k.clone()));
            k
        }
        Schema::Fixed(f) => {
            let k = Kind::Fixed(f.size);
            named.push((f.name.fullname(None), k.clone()));
            k
        }
        Schema::Union(u) => Kind::Union(
            u.variants()
                .iter()
                .map(|v| kind(v, named))
                .collect::<Option<Vec<_>>>()?,
        ),
        Schema::Record(r) => {
            let k = Kind::Record(
                r.fields
                    .iter()
                    .map(|f| kind(&f.schema, named))
                    .collect::<Option<Vec<_>>>()?,
            );
            named.push((r.name.fullname(None), k.clone()));
            k
        }
        Schema::Array(a) => Kind::Array(Box::new(kind(&a.items, named)?)),
        Schema::Ref { name } => {
            let full = name.fullname(None);
            named.iter().find(|(n, _)| *n == full)?.1.clone()
        }
        _ => return None,
    })
}

/// Whether the field's default is the zero value a hand-written decoder leaves in a field the
/// writer did not have: null, false, 0 or "".
pub fn zero_default(field: &apache_avro::schema::RecordField) -> bool {
    field.default.as_ref().is_some_and(|d| {
        d.is_null() || d.as_bool() == Some(false) || d.as_i64() == Some(0) || d.as_str() == Some("")
    })
}

/// Reads an Avro binary datum front to back; every method returns `None` on anything that is
/// not exactly valid (truncation, a varint over 64 bits, an int out of range, invalid UTF-8, an
/// out-of-range enum or union index, a boolean byte other than 0 or 1).
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// What is left unread.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// `int` or `long`: zig-zag varint.
    pub fn long(&mut self) -> Option<i64> {
        let mut value: u64 = 0;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return None; // more than 64 bits
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        None
    }

    pub fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    pub fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.buf.len() < len {
            return None;
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(head)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.long()?).ok()?;
        std::str::from_utf8(self.bytes(len)?).ok()
    }

    /// Reads and drops one value of `kind`.
    pub fn skip(&mut self, kind: &Kind) -> Option<()> {
        match kind {
            Kind::Null => {}
            Kind::Bool => {
                if *self.bytes(1)?.first()? > 1 {
                    return None;
                }
            }
            Kind::Int => {
                self.int()?;
            }
            Kind::Long => {
                self.long()?;
            }
            Kind::Float => {
                self.bytes(4)?;
            }
            Kind::Double => {
                self.bytes(8)?;
            }
            Kind::Bytes => {
                let len = usize::try_from(self.long()?).ok()?;
                self.bytes(len)?;
            }
            Kind::Str => {
                self.str()?;
            }
            Kind::Enum(symbols) => {
                let i = usize::try_from(self.long()?).ok()?;
                if i >= symbols.len() {
                    return None;
                }
            }
            Kind::Fixed(n) => {
                self.bytes(*n)?;
            }
            Kind::Union(variants) => {
                let i = usize::try_from(self.long()?).ok()?;
                self.skip(variants.get(i)?)?;
            }
            Kind::Array(items) => {
                let count = self.block()?;
                if count > 0 {
                    for _ in 0..count {
                        self.skip(items)?;
                    }
                    self.block_end()?;
                }
            }
            Kind::Record(fields) => {
                for f in fields {
                    self.skip(f)?;
                }
            }
        }
        Some(())
    }

    /// The item count of an array written as one block (count, items, then a 0 count), as
    /// every flowlens writer writes arrays; the caller reads the items, then the closing 0
    /// with [`Reader::block_end`]. An empty array is the 0 count alone (nothing to close).
    /// Arrays of several blocks or with a negative count (a block with its byte size) are
    /// declined, and so is a count larger than the bytes left (each item of a flowlens array
    /// takes one byte at least).
    pub fn block(&mut self) -> Option<usize> {
        let count = usize::try_from(self.long()?).ok()?;
        if count == 0 {
            return Some(0);
        }
        if count > self.buf.len() {
            return None;
        }
        Some(count)
    }

    /// The closing 0 count of a one-block array whose items were read ([`Reader::block`]).
    pub fn block_end(&mut self) -> Option<()> {
        (self.long()? == 0).then_some(())
    }

    /// An array of `long` written as one block ([`Reader::block`]), appended to `out`.
    pub fn longs(&mut self, out: &mut Vec<i64>) -> Option<()> {
        let count = self.block()?;
        if count > 0 {
            out.reserve(count);
            for _ in 0..count {
                out.push(self.long()?);
            }
            self.block_end()?;
        }
        Some(())
    }

    pub fn bool(&mut self) -> Option<bool> {
        match self.bytes(1)?[0] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// `fixed IPv6Address(16)`.
    pub fn addr(&mut self) -> Option<Ipv6Addr> {
        Some(<[u8; 16]>::try_from(self.bytes(16)?).ok()?.into())
    }

    /// A union index of `["null", T]`: false for null, true for T.
    pub fn present(&mut self) -> Option<bool> {
        match self.long()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// `["null", "string"]` with null read as "".
    pub fn opt_str(&mut self) -> Option<&'a str> {
        match self.long()? {
            0 => Some(""),
            1 => self.str(),
            _ => None,
        }
    }
}

/// Where a datum's string or bytes length, or an array's item count, runs past its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthPastEnd {
    /// Offset of the length's varint in the datum.
    pub at: usize,
    /// The length it claims.
    pub claimed: u64,
    /// Bytes the datum has after the varint.
    pub left: usize,
}

/// Walks `datum` as apache-avro 0.21 reads a value of `kind` and returns the first string or
/// bytes length (or array block count) that claims more bytes (items) than are left, if any.
/// apache-avro allocates a buffer of the claimed size before it reads (up to 512 MiB, whatever
/// the datum's size): running this first bounds what decoding a datum holds by the datum's own
/// size.
///
/// The walk is at least as lenient as apache-avro: it goes on wherever apache-avro goes on
/// (an int out of range, a boolean byte over 1, invalid UTF-8, an enum index out of range,
/// a varint's 10th byte over 1) and stops only where apache-avro stops (the datum ends, a
/// varint longer than 10 bytes, a negative length, a union index out of range). So a datum
/// apache-avro decodes is never reported (arrays: while each item takes a byte at least, as in
/// every flowlens schema), and every length apache-avro would allocate for is checked.
pub fn length_past_end(kind: &Kind, datum: &[u8]) -> Option<LengthPastEnd> {
    let mut walk = Walk { datum, pos: 0 };
    match walk.value(kind) {
        Err(Stop::PastEnd(found)) => Some(found),
        Err(Stop::Unreadable) | Ok(()) => None,
    }
}

/// Why [`Walk`] stopped before the end of a value.
enum Stop {
    PastEnd(LengthPastEnd),
    /// apache-avro stops here too, with an error of its own.
    Unreadable,
}

struct Walk<'a> {
    datum: &'a [u8],
    pos: usize,
}

impl Walk<'_> {
    fn left(&self) -> usize {
        self.datum.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<(), Stop> {
        if n > self.left() {
            return Err(Stop::Unreadable);
        }
        self.pos += n;
        Ok(())
    }

    /// A zig-zag varint as apache-avro reads it: up to 10 bytes, excess high bits dropped.
    fn long(&mut self) -> Result<i64, Stop> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = *self.datum.get(self.pos).ok_or(Stop::Unreadable)?;
            self.pos += 1;
            value |= u64::from(b & 0x7f).wrapping_shl(7 * i);
            if b & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(Stop::Unreadable)
    }

    fn length(&mut self) -> Result<(), Stop> {
        let at = self.pos;
        let claimed = u64::try_from(self.long()?).map_err(|_| Stop::Unreadable)?;
        let left = self.left();
        if claimed > left as u64 {
            return Err(Stop::PastEnd(LengthPastEnd { at, claimed, left }));
        }
        self.take(claimed as usize)
    }

    fn value(&mut self, kind: &Kind) -> Result<(), Stop> {
        match kind {
            Kind::Null => Ok(()),
            Kind::Bool => self.take(1),
            Kind::Int | Kind::Long | Kind::Enum(_) => self.long().map(drop),
            Kind::Float => self.take(4),
            Kind::Double => self.take(8),
            Kind::Fixed(n) => self.take(*n),
            Kind::Bytes | Kind::Str => self.length(),
            Kind::Union(variants) => {
                let i = usize::try_from(self.long()?).map_err(|_| Stop::Unreadable)?;
                self.value(variants.get(i).ok_or(Stop::Unreadable)?)
            }
            Kind::Array(items) => self.array(items),
            Kind::Record(fields) => fields.iter().try_for_each(|f| self.value(f)),
        }
    }

    /// Blocks as apache-avro reads them: a count (0 ends the array; a negative one is followed
    /// by the block's size in bytes, which apache-avro reads and ignores), then the items.
    /// apache-avro reserves room for a block's items before reading them, so a count larger
    /// than the bytes left is reported like a length (no item of a flowlens array is empty).
    fn array(&mut self, items: &Kind) -> Result<(), Stop> {
        loop {
            let at = self.pos;
            let count = self.long()?;
            let count = match count {
                0 => return Ok(()),
                c if c < 0 => {
                    self.long()?;
                    c.checked_neg().ok_or(Stop::Unreadable)?
                }
                c => c,
            };
            let left = self.left();
            if count as u64 > left as u64 {
                return Err(Stop::PastEnd(LengthPastEnd {
                    at,
                    claimed: count as u64,
                    left,
                }));
            }
            for _ in 0..count {
                self.value(items)?;
            }
        }
    }
}
