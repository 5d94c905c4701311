//! The meta file: the vote and the last purged log id, the two facts Raft needs durable
//! before the call that changes them returns, and the raw store's low-water mark (raised by
//! retention before it removes segments). It is tiny and rarely written (elections,
//! purges, retention), so it is replaced whole and atomically: write `meta.tmp`, fsync it, rename it
//! over `meta`, fsync the directory. A reader therefore sees the old or the new file,
//! never a mix; a checksum catches anything else.

use std::path::Path;

use super::format::{self, Meta, META_FILE, META_FILE_LEN, META_FILE_V1_LEN};
use super::fs::{create_atomically, FileSystem, OpenMode};
use crate::error::{Error, Result};

/// Reads the meta file of `dir`; a missing file is the empty meta of a new log.
pub(crate) fn read(fs: &dyn FileSystem, dir: &Path) -> Result<Meta> {
    let path = dir.join(META_FILE);
    let ctx = |what: &str| format!("{what} {}", path.display());
    if !fs
        .exists(&path)
        .map_err(|e| Error::io(ctx("checking"), e))?
    {
        return Ok(Meta::default());
    }
    let file = fs
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io(ctx("opening"), e))?;
    let len = file.size().map_err(|e| Error::io(ctx("measuring"), e))?;
    if len != META_FILE_LEN as u64 && len != META_FILE_V1_LEN as u64 {
        return Err(Error::corruption(
            &path,
            0,
            format!("meta file is {len} bytes, expected {META_FILE_LEN} (or {META_FILE_V1_LEN})"),
        ));
    }
    let mut b = [0u8; META_FILE_LEN];
    // `len` is one of the two lengths checked above.
    let b = &mut b[..len as usize];
    file.read_exact_at(b, 0)
        .map_err(|e| Error::io(ctx("reading"), e))?;
    format::decode_meta(b).map_err(|r| Error::corruption(&path, 0, r))
}

/// Replaces the meta file of `dir` with `meta`, durably.
pub(crate) fn write(fs: &dyn FileSystem, dir: &Path, meta: &Meta) -> Result<()> {
    create_atomically(fs, dir, META_FILE, &format::encode_meta(meta))?;
    Ok(())
}
