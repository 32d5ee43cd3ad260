//! Which mappings cover a range: the extent used for coarse userfaultfd registration.

use crate::error::{Error, Result};
use crate::va::VaRange;

/// One line of `/proc/self/maps`, reduced to what registration needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// `[start, end)` of the VMA.
    pub range: VaRange,
    /// Whether the pseudo-path marks a mapping userfaultfd cannot take (`[vsyscall]`, `[vvar]`, `[vdso]`).
    pub special: bool,
}

/// Parses the text of a maps file.
pub fn parse(text: &str) -> Vec<MapEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (lo, hi) = fields.next()?.split_once('-')?;
            let start = u64::from_str_radix(lo, 16).ok()?;
            let end = u64::from_str_radix(hi, 16).ok()?;
            let path = fields.nth(4).unwrap_or("");
            let special = matches!(
                path,
                "[vsyscall]" | "[vvar]" | "[vdso]" | "[vvar_vclock]" | "[uprobes]"
            );
            Some(MapEntry {
                range: VaRange::from_bounds(start, end)?,
                special,
            })
        })
        .collect()
}

/// The smallest union of whole, contiguous mappings that covers `want`; `NotMapped` if a byte of
/// `want` is unmapped.
pub fn covering_extent(entries: &[MapEntry], want: VaRange) -> Result<VaRange> {
    let not_mapped = Error::NotMapped {
        start: want.start(),
        end: want.end(),
    };
    let first = entries
        .iter()
        .position(|e| e.range.start() <= want.start() && want.start() < e.range.end())
        .ok_or_else(|| not_mapped.clone_shallow())?;
    let start = entries[first].range.start();
    let mut end = entries[first].range.end();
    let mut special = entries[first].special;
    for e in &entries[first + 1..] {
        if end >= want.end() {
            break;
        }
        if e.range.start() != end {
            return Err(not_mapped);
        }
        end = e.range.end();
        special |= e.special;
    }
    if end < want.end() {
        return Err(not_mapped);
    }
    if special {
        return Err(Error::UffdUnsupportedMapping {
            start,
            end,
            errno: rustix::io::Errno::INVAL,
        });
    }
    VaRange::from_bounds(start, end).ok_or(not_mapped)
}

/// Reads `/proc/self/maps` and returns the extent covering `want`.
pub fn extent_of(want: VaRange) -> Result<VaRange> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|source| Error::Io {
        what: "reading /proc/self/maps",
        source,
    })?;
    covering_extent(&parse(&text), want)
}

impl Error {
    fn clone_shallow(&self) -> Error {
        match self {
            Error::NotMapped { start, end } => Error::NotMapped {
                start: *start,
                end: *end,
            },
            _ => Error::Config("internal: clone_shallow on an unexpected variant"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a0021000 rw-p 00000000 00:00 0          [heap]
7f0000000000-7f0000004000 rw-p 00000000 00:00 0
7f0000004000-7f0000010000 r--p 00000000 00:00 0
7f0000020000-7f0000030000 rw-p 00000000 08:01 1234       /usr/lib/libc.so.6
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]
";

    #[test]
    fn extent_is_the_whole_mapping() {
        let e = parse(MAPS);
        let r = covering_extent(&e, VaRange::new(0x7f0000001000, 0x1000).unwrap()).unwrap();
        assert_eq!((r.start(), r.end()), (0x7f0000000000, 0x7f0000004000));
    }

    #[test]
    fn extent_spans_contiguous_mappings() {
        let e = parse(MAPS);
        let r = covering_extent(&e, VaRange::new(0x7f0000003000, 0x2000).unwrap()).unwrap();
        assert_eq!((r.start(), r.end()), (0x7f0000000000, 0x7f0000010000));
    }

    #[test]
    fn holes_are_not_mapped() {
        let e = parse(MAPS);
        assert!(matches!(
            covering_extent(&e, VaRange::new(0x7f000000f000, 0x2000).unwrap()),
            Err(Error::NotMapped { .. })
        ));
        assert!(matches!(
            covering_extent(&e, VaRange::new(0x1000, 0x1000).unwrap()),
            Err(Error::NotMapped { .. })
        ));
    }

    #[test]
    fn special_mappings_are_refused() {
        let e = parse(MAPS);
        assert!(matches!(
            covering_extent(&e, VaRange::new(0xffffffffff600000, 0x1000).unwrap()),
            Err(Error::UffdUnsupportedMapping { .. })
        ));
    }
}
