//! Which mappings cover a range, what kind they are, and whether userfaultfd really registered
//! them: `/proc/self/maps` before registering, `/proc/self/smaps` (`VmFlags`) after.

use crate::error::{Error, MappingKind, Result};
use crate::sys::va::{page_size, VaRange};

/// One line of `/proc/self/maps`, reduced to what registration needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// `[start, end)` of the VMA.
    pub range: VaRange,
    /// What backs it.
    pub kind: MappingKind,
    /// From `smaps` only: whether its `VmFlags` show a userfaultfd registration of the mode
    /// asked for (`uw` for write-protect, `um` for missing).
    pub uffd: bool,
}

fn parse_header(line: &str) -> Option<(VaRange, MappingKind)> {
    let mut fields = line.split_whitespace();
    let (lo, hi) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(lo, 16).ok()?;
    let end = u64::from_str_radix(hi, 16).ok()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("");
    let kind = if matches!(
        path,
        "[vsyscall]" | "[vvar]" | "[vdso]" | "[vvar_vclock]" | "[uprobes]"
    ) {
        MappingKind::Special
    } else if perms.as_bytes().get(3) == Some(&b's') {
        MappingKind::Shared
    } else if inode != 0 {
        MappingKind::PrivateFile
    } else {
        MappingKind::PrivateAnonymous
    };
    Some((VaRange::from_bounds(start, end)?, kind))
}

/// Parses the text of a maps file.
pub fn parse(text: &str) -> Vec<MapEntry> {
    text.lines()
        .filter_map(|line| {
            let (range, kind) = parse_header(line)?;
            Some(MapEntry {
                range,
                kind,
                uffd: false,
            })
        })
        .collect()
}

/// Parses the text of an smaps file; `flag` is the `VmFlags` mnemonic of the registration
/// (`"uw"` or `"um"`).
pub fn parse_smaps(text: &str, flag: &str) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.uffd = flags.split_whitespace().any(|f| f == flag);
            }
        } else if let Some((range, kind)) = parse_header(line) {
            out.push(MapEntry {
                range,
                kind,
                uffd: false,
            });
        }
    }
    out
}

/// The union of the whole mappings overlapping `want`. Errors: `NotMapped` if a byte of `want`
/// is unmapped; `UffdUnsupportedMapping` for special mappings; `UncoveredMapping` for a mapping
/// whose pages can change without an event (anything but private anonymous memory).
pub fn covering_extent(entries: &[MapEntry], want: VaRange) -> Result<VaRange> {
    let not_mapped = || Error::NotMapped {
        start: want.start(),
        end: want.end(),
    };
    let mut cur = want.start();
    let mut start = None;
    for e in entries.iter().skip_while(|e| e.range.end() <= want.start()) {
        if cur >= want.end() {
            break;
        }
        if e.range.start() > cur {
            return Err(not_mapped());
        }
        match e.kind {
            MappingKind::PrivateAnonymous => {}
            MappingKind::Special => {
                return Err(Error::UffdUnsupportedMapping {
                    start: e.range.start(),
                    end: e.range.end(),
                    errno: rustix::io::Errno::INVAL,
                })
            }
            kind => {
                return Err(Error::UncoveredMapping {
                    start: e.range.start(),
                    end: e.range.end(),
                    kind,
                })
            }
        }
        start.get_or_insert(e.range.start());
        cur = e.range.end();
    }
    match start {
        Some(s) if cur >= want.end() => VaRange::from_bounds(s, cur).ok_or_else(not_mapped),
        _ => Err(not_mapped()),
    }
}

/// The parts of `within` that `entries` (from smaps) show registered with userfaultfd.
pub fn registered_parts(entries: &[MapEntry], within: VaRange) -> Vec<VaRange> {
    entries
        .iter()
        .filter(|e| e.uffd && e.range.overlaps(&within))
        .filter_map(|e| {
            VaRange::from_bounds(
                e.range.start().max(within.start()),
                e.range.end().min(within.end()),
            )
        })
        .collect()
}

/// Reads `/proc/self/smaps` and returns what of `within` is registered in `mode`.
pub fn registered_now(
    within: VaRange,
    mode: crate::sys::uffd::RegisterMode,
) -> Result<Vec<VaRange>> {
    let text = std::fs::read_to_string("/proc/self/smaps").map_err(|source| Error::Io {
        what: "reading /proc/self/smaps",
        source,
    })?;
    let flag = match mode {
        crate::sys::uffd::RegisterMode::WriteProtect => "uw",
        crate::sys::uffd::RegisterMode::Missing => "um",
    };
    Ok(registered_parts(&parse_smaps(&text, flag), within))
}

/// Reads `/proc/self/maps` and returns the extent covering `want`.
pub fn extent_of(want: VaRange) -> Result<VaRange> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|source| Error::Io {
        what: "reading /proc/self/maps",
        source,
    })?;
    covering_extent(&parse(&text), want)
}

/// A file as `/proc/self/maps` names it: `((major, minor), inode)`.
pub type FileId = ((u32, u32), u64);

/// One line of a maps file with its file identity: `(range, (major, minor), inode, offset)`.
fn parse_file_line(line: &str) -> Option<(VaRange, (u32, u32), u64, u64)> {
    let mut f = line.split_whitespace();
    let (lo, hi) = f.next()?.split_once('-')?;
    let range = VaRange::from_bounds(
        u64::from_str_radix(lo, 16).ok()?,
        u64::from_str_radix(hi, 16).ok()?,
    )?;
    let _perms = f.next()?;
    let offset = u64::from_str_radix(f.next()?, 16).ok()?;
    let (maj, min) = f.next()?.split_once(':')?;
    let dev = (
        u32::from_str_radix(maj, 16).ok()?,
        u32::from_str_radix(min, 16).ok()?,
    );
    let inode = f.next()?.parse().ok()?;
    Some((range, dev, inode, offset))
}

/// The virtual ranges, in `text` (a maps file), that map bytes `[offset, end)` of the file
/// `(dev, inode)`.
pub fn file_ranges(text: &str, dev: (u32, u32), inode: u64, offset: u64, end: u64) -> Vec<VaRange> {
    text.lines()
        .filter_map(parse_file_line)
        .filter(|&(_, d, i, _)| d == dev && i == inode && inode != 0)
        .filter_map(|(r, _, _, off)| {
            let (lo, hi) = (offset.max(off), end.min(off.saturating_add(r.len())));
            if lo >= hi {
                return None;
            }
            let p = page_size();
            let start = (r.start() + (lo - off)) & !(p - 1);
            let stop = (r.start() + (hi - off)).saturating_add(p - 1) & !(p - 1);
            VaRange::from_bounds(start, stop.min(r.end()))
        })
        .collect()
}

/// Reads `/proc/self/maps` and returns every mapping of `[offset, end)` of the file.
pub fn mappings_of_file(
    dev: (u32, u32),
    inode: u64,
    offset: u64,
    end: u64,
) -> Result<Vec<VaRange>> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|source| Error::Io {
        what: "reading /proc/self/maps",
        source,
    })?;
    Ok(file_ranges(&text, dev, inode, offset, end))
}

/// The file and the file offset mapped at `addr`, if a file is mapped there.
pub fn file_at(addr: u64) -> Result<Option<(FileId, u64)>> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|source| Error::Io {
        what: "reading /proc/self/maps",
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(parse_file_line)
        .find(|(r, _, i, _)| r.start() <= addr && addr < r.end() && *i != 0)
        .map(|(r, d, i, off)| ((d, i), off + (addr - r.start()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a0021000 rw-p 00000000 00:00 0          [heap]
7f0000000000-7f0000004000 rw-p 00000000 00:00 0
7f0000004000-7f0000010000 r--p 00000000 00:00 0
7f0000020000-7f0000030000 rw-p 00000000 08:01 1234       /usr/lib/libc.so.6
7f0000040000-7f0000050000 rw-s 00000000 00:01 77         /memfd:x (deleted)
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
    fn shared_and_file_mappings_are_uncovered() {
        let e = parse(MAPS);
        assert!(matches!(
            covering_extent(&e, VaRange::new(0x7f0000041000, 0x1000).unwrap()),
            Err(Error::UncoveredMapping {
                kind: MappingKind::Shared,
                ..
            })
        ));
        assert!(matches!(
            covering_extent(&e, VaRange::new(0x7f0000020000, 0x1000).unwrap()),
            Err(Error::UncoveredMapping {
                kind: MappingKind::PrivateFile,
                ..
            })
        ));
    }

    #[test]
    fn smaps_flags_show_what_is_registered() {
        let text = "\
7f0000000000-7f0000004000 rw-p 00000000 00:00 0
Size:                 16 kB
VmFlags: rd wr mr mw me ac uw
7f0000004000-7f0000008000 rw-p 00000000 00:00 0
Size:                 16 kB
VmFlags: rd wr mr mw me ac
";
        let e = parse_smaps(text, "uw");
        let want = VaRange::new(0x7f0000002000, 0x4000).unwrap();
        assert_eq!(
            registered_parts(&e, want),
            vec![VaRange::new(0x7f0000002000, 0x2000).unwrap()]
        );
        assert!(registered_parts(&parse_smaps(text, "um"), want).is_empty());
    }

    #[test]
    fn every_mapping_of_a_file_range_is_found() {
        let text = "\
7f0000000000-7f0000004000 rw-s 00000000 00:01 77         /memfd:x (deleted)
7f0000010000-7f0000012000 rw-s 00002000 00:01 77         /memfd:x (deleted)
7f0000020000-7f0000024000 rw-s 00000000 00:01 78         /memfd:y (deleted)
";
        let p = page_size();
        let got = file_ranges(text, (0, 1), 77, 2 * p, 3 * p);
        assert_eq!(
            got,
            vec![
                VaRange::new(0x7f0000002000, p).unwrap(),
                VaRange::new(0x7f0000010000, p).unwrap()
            ]
        );
        assert_eq!(file_ranges(text, (0, 1), 77, 8 * p, u64::MAX), vec![]);
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
