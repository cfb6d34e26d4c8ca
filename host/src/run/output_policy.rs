//! The output policy of every command: what `host` may replace, and how a run's files appear
//! (all at once, or not at all).
//!
//! Rules (issue 22):
//! - A **folder output** (`--out DIR` of sample, restore, merge, a shard) must be absent, empty,
//!   or a folder `host` wrote earlier holding nothing else: every committed folder carries the
//!   list of its files (`.host-files`), and an entry the list does not name (a note the user
//!   added, a folder of other runs) is an error naming it, as is a folder without the list.
//!   The new run is written into the marked staging folder `.NAME.host-staging` beside it and
//!   swapped in as a unit at [`Outputs::commit`] (an atomic exchange of the two folders; where
//!   the file system cannot exchange, the old folder is moved aside to `.NAME.host-old` first).
//!   The old run is then deleted: a rerun with a smaller `--n` leaves no stale files. The
//!   run holds an flock on the old folder and on its staging folder until it ends, so a
//!   second run on the same output stops instead of deleting the first one's files.
//! - A **file output** (`denoise OUT`, `measure --out`, `schedule --out/--plot`, `evaluate
//!   --out`…) replaces only a regular file: a folder, symlink, FIFO, device node or socket at
//!   that path is an error naming it. It is written to `.NAME.host-staging` beside it and
//!   renamed over the path at commit; the run holds an flock on that staging file from its
//!   first write until it ends, so a second run on the same file stops; a command that
//!   replaces its files several times (train) holds a [`RunLock`] for the whole run. `-` is
//!   stdout, for text outputs only ([`OutputFile::is_stdout`]; the command prints the text
//!   itself).
//! - An output that **is an input** (the same file, or a folder holding an input) is an error.
//! - A set of outputs dropped without [`Outputs::commit`] (an error, a signal turned into an
//!   error) removes its staging entries; the paths keep what they held before.
//! - After SIGKILL at most one staging entry per output remains (its name is fixed), and the
//!   next claim of that output removes it — only when it is recognisably ours.
//!
//! API: claim every output before the work (so a bad path fails in milliseconds), write during
//! the run, commit at the end:
//! ```ignore
//! let mut out = Outputs::in_folder(&args.out, &[&input])?;   // folder output, or
//! let mut out = Outputs::files(); Outputs::check_file(&path, "--out", &[&input])?;
//! out.write("run.json", &bytes)?;         // relative to the folder (file mode: the path)
//! out.write_with("big.safetensors", |w| { … })?;
//! out.commit()?;                          // swap in the folder / rename the files
//! ```
//! [`OutputDir`] and [`OutputFile`] are the two claims on their own, for commands (train) that
//! manage their writes themselves.

use std::ffi::OsString;
use std::fs::{self, FileType};
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Suffix of the staging entry beside an output (`.NAME.host-staging`).
pub const STAGING_SUFFIX: &str = ".host-staging";
/// Suffix of an old folder output moved aside during a non-atomic swap (`.NAME.host-old`).
const ASIDE_SUFFIX: &str = ".host-old";
/// Marker file inside a staging folder while it is being written.
const STAGING_MARK: &str = ".host-staging-mark";
/// Files that made a folder one `host` wrote before folders listed their files: run.json, a
/// shard manifest, a merged table (such a folder is named as written by an older host).
const RUN_RECORDS: [&str; 3] = ["run.json", "shard.json", "table.json"];
/// The list of every file of a committed folder output (relative paths, one per line, sorted
/// by name at each level): exactly what a later run may replace.
pub const FILE_LIST: &str = ".host-files";
/// The largest file list read (about 10 million paths).
const MAX_FILE_LIST_BYTES: u64 = 1 << 28;

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Absent,
    File,
    Folder,
    /// Something `host` never replaces: symlink, FIFO, device node, socket.
    Special(&'static str),
}

fn kind_of(t: FileType) -> Found {
    if t.is_symlink() {
        Found::Special("symlink")
    } else if t.is_dir() {
        Found::Folder
    } else if t.is_file() {
        Found::File
    } else if t.is_fifo() {
        Found::Special("FIFO")
    } else if t.is_char_device() {
        Found::Special("character device")
    } else if t.is_block_device() {
        Found::Special("block device")
    } else if t.is_socket() {
        Found::Special("socket")
    } else {
        Found::Special("special file")
    }
}

/// What is at `path` (not following a symlink).
fn inspect(path: &Path) -> Result<Found> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(kind_of(m.file_type())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Absent),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
}

/// `path`'s folder ("." for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `.NAME{suffix}` beside `path`.
fn beside(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("output {} has no file name", path.display()))?;
    let mut hidden = OsString::from(".");
    hidden.push(name);
    hidden.push(suffix);
    Ok(parent_of(path).join(hidden))
}

/// The staging entry of output `path`.
pub fn staging_path(path: &Path) -> Result<PathBuf> {
    beside(path, STAGING_SUFFIX)
}

fn check_parent(path: &Path, flag: &str) -> Result<()> {
    let parent = parent_of(path);
    if !parent.is_dir() {
        bail!(
            "{flag} {}: folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Whether folder `dir` holds a run record that `host` wrote.
fn is_host_run(dir: &Path) -> bool {
    RUN_RECORDS.iter().any(|name| {
        let path = dir.join(name);
        matches!(inspect(&path), Ok(Found::File))
            && fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v.get("command").is_some_and(|c| c.is_string()))
    })
}

/// Every entry under `dir` (recursively, not following symlinks) as a '/'-joined path
/// relative to `dir` and what it is, folders before their contents.
fn walk(dir: &Path) -> Result<Vec<(String, Found)>> {
    fn visit(root: &Path, rel: &str, out: &mut Vec<(String, Found)>) -> Result<()> {
        let here = root.join(rel);
        let mut entries = fs::read_dir(&here)
            .with_context(|| format!("cannot read folder {}", here.display()))?
            .map(|e| e.and_then(|e| Ok((e.file_name(), e.file_type()?))))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("cannot read folder {}", here.display()))?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in entries {
            // host writes UTF-8 names only: another one is never in a list.
            let found = match name.to_str() {
                Some(_) => kind_of(kind),
                None => Found::Special("non-UTF-8 name"),
            };
            let name = name.to_string_lossy();
            let path = if rel.is_empty() {
                name.into_owned()
            } else {
                format!("{rel}/{name}")
            };
            out.push((path.clone(), found));
            if found == Found::Folder {
                visit(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    visit(dir, "", &mut out)?;
    Ok(out)
}

/// The first entry of folder output `dir` that a new run may not delete: one its file list
/// does not name (a folder counts as listed when a listed file lies in it). Without a list,
/// the first entry.
fn unlisted_entry(dir: &Path) -> Result<Option<PathBuf>> {
    let list = dir.join(FILE_LIST);
    if inspect(&list)? != Found::File {
        return first_entry(dir);
    }
    let bytes = tweedie_nn::input::read_capped(&list, "file list", MAX_FILE_LIST_BYTES)?;
    let text = String::from_utf8_lossy(&bytes);
    let listed: std::collections::BTreeSet<&str> = text.lines().collect();
    for (rel, found) in walk(dir)? {
        let ours = match found {
            Found::File => rel == FILE_LIST || listed.contains(rel.as_str()),
            Found::Folder => {
                let inside = format!("{rel}/");
                listed
                    .range(inside.as_str()..)
                    .next()
                    .is_some_and(|l| l.starts_with(&inside))
            }
            _ => false,
        };
        if !ours {
            return Ok(Some(dir.join(rel)));
        }
    }
    Ok(None)
}

/// Creates file `rel` (its sub-folders too) anew under the folder open as `dir`, through
/// that descriptor: no component is followed through a symlink, and a name already there is
/// unlinked first (a file rewritten in one run, or a link someone put there: its target
/// keeps its bytes).
fn create_in(dir: &fs::File, rel: &Path) -> std::io::Result<fs::File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let names: Vec<std::ffi::CString> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => std::ffi::CString::new(n.as_bytes()).map_err(|_| invalid()),
            _ => Err(invalid()),
        })
        .collect::<std::io::Result<_>>()?;
    let (last, folders) = names.split_last().ok_or_else(invalid)?;
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let mut held: Option<fs::File> = None;
    for name in folders {
        let at = held.as_ref().unwrap_or(dir).as_raw_fd();
        // SAFETY: `at` is an open folder descriptor, `name` a NUL-terminated component.
        if unsafe { libc::mkdirat(at, name.as_ptr(), 0o777) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: as above; the descriptor returned is owned by the File made from it.
        let fd = check(unsafe { libc::openat(at, name.as_ptr(), flags) })?;
        held = Some(unsafe { fs::File::from_raw_fd(fd) });
    }
    let at = held.as_ref().unwrap_or(dir).as_raw_fd();
    // SAFETY: as above.
    if unsafe { libc::unlinkat(at, last.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
    }
    let flags = libc::O_WRONLY
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOFOLLOW
        | libc::O_NONBLOCK
        | libc::O_CLOEXEC;
    // SAFETY: as above; the descriptor returned is owned by the File made from it.
    let fd = check(unsafe { libc::openat(at, last.as_ptr(), flags, 0o666 as libc::c_uint) })?;
    Ok(unsafe { fs::File::from_raw_fd(fd) })
}

/// Writes the file list of staging folder `dir` (every regular file in it but the mark).
fn write_file_list(dir: &Path, open_dir: &fs::File) -> Result<()> {
    let mut text = String::new();
    for (rel, found) in walk(dir)? {
        if found == Found::File && rel != STAGING_MARK {
            if rel.contains('\n') {
                bail!(
                    "{}: a file name with a line break",
                    dir.join(&rel).display()
                );
            }
            text.push_str(&rel);
            text.push('\n');
        }
    }
    let path = dir.join(FILE_LIST);
    create_in(open_dir, Path::new(FILE_LIST))
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The first entry of `dir` in name order, if any.
fn first_entry(dir: &Path) -> Result<Option<PathBuf>> {
    let mut names = fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot read folder {}", dir.display()))?;
    names.sort();
    Ok(names.first().map(|n| dir.join(n)))
}

/// Whether `input` is `output` or lies inside it (same file by device and inode, else by path).
fn overlaps(output: &Path, input: &Path) -> bool {
    let (Ok(o), Ok(i)) = (fs::canonicalize(output), fs::canonicalize(input)) else {
        return false;
    };
    if i.starts_with(&o) {
        return true;
    }
    match (fs::metadata(output), fs::metadata(input)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn check_inputs(path: &Path, flag: &str, inputs: &[&Path]) -> Result<()> {
    if let Some(input) = inputs.iter().find(|i| overlaps(path, i)) {
        bail!(
            "{flag} {}: is an input ({}); write the output elsewhere",
            path.display(),
            input.display()
        );
    }
    Ok(())
}

/// An exclusive advisory lock (flock) on a folder, held while the value lives: a second
/// `host` run on the same output finds the first's folders locked and stops instead of
/// deleting them. Released by the kernel when the process dies, so a killed run's folders
/// become removable.
#[derive(Debug)]
struct FolderLock {
    /// The open entry (locked where the file system has locks).
    file: fs::File,
}

/// Locks folder `dir`; an error when another process holds it. Where the file system has no
/// locks (some network file systems), the run goes on unlocked.
fn lock_folder(dir: &Path, output: &Path) -> Result<FolderLock> {
    let file = fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    try_lock(file, dir, output)
}

/// What [`lock_named`] found at a name.
enum Named {
    /// The entry the name holds, locked (where the file system has locks).
    Locked(FolderLock),
    /// Nothing is there any more.
    Gone,
}

/// Opens and locks the entry at `path` (a folder, or a regular file opened without following a
/// symlink), then checks that the name still holds what was locked: a run that removed it and
/// put its own live entry there meanwhile makes this an error, not a lock on a deleted inode.
fn lock_named(path: &Path, want_folder: bool, output: &Path) -> Result<Named> {
    let opened = if want_folder {
        fs::File::open(path)
    } else {
        open_no_follow(path)
    };
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Named::Gone),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let held = file
        .metadata()
        .with_context(|| format!("cannot inspect {}", path.display()))?;
    let lock = try_lock(file, path, output)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => Ok(Named::Locked(lock)),
        Ok(_) => bail!(
            "{}: another host run is writing this output ({} was just replaced); wait for it \
             or choose another name",
            output.display(),
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Named::Gone),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
}

/// Opens `path` to read, never through a symlink, never blocking on a FIFO.
fn open_no_follow(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Whether the name `path` holds the file `file` is open on.
fn names_file(path: &Path, file: &fs::File) -> bool {
    match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Creates the regular file `path` anew (never opening what is there: a stale entry host
/// left is removed first, anything else is an error naming it) and locks it for as long as the
/// returned file (or a clone of it) is open; an error naming `output` when another run holds
/// the entry there.
fn open_locked(path: &Path, output: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = || format!("cannot write {}", path.display());
    for _ in 0..4 {
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let file = match created {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                remove_stale(path, false, output)?;
                continue;
            }
            Err(e) => return Err(e).with_context(shown),
        };
        // A stale-entry removal by another run may take the new name before we lock it.
        let lock = try_lock(file.try_clone().with_context(shown)?, path, output)?;
        if names_file(path, &file) {
            drop(lock); // `file` keeps the lock: one open file description
            return Ok(file);
        }
    }
    bail!(
        "{}: {} kept changing (another host run on this output?)",
        output.display(),
        path.display()
    )
}

/// flock(LOCK_EX | LOCK_NB) on `file`, which is `path`: an error naming `output` when another
/// process holds it.
fn try_lock(file: fs::File, path: &Path, output: &Path) -> Result<FolderLock> {
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(FolderLock { file });
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        bail!(
            "{}: another host run is writing this output ({} is in use); wait for it or \
             choose another name",
            output.display(),
            path.display()
        );
    }
    Ok(FolderLock { file })
}

/// Removes a staging (or moved-aside) entry a killed run left at `stale`, when it is ours:
/// a regular file, or a folder that is empty, marked, or a `host` run. Anything else is an
/// error naming it.
fn remove_stale(stale: &Path, want_folder: bool, output: &Path) -> Result<()> {
    let ours = match inspect(stale)? {
        Found::Absent => return Ok(()),
        Found::File => !want_folder,
        Found::Folder => {
            want_folder
                && (stale.join(STAGING_MARK).is_file()
                    || stale.join(FILE_LIST).is_file()
                    || is_host_run(stale)
                    || first_entry(stale)?.is_none())
        }
        Found::Special(_) => false,
    };
    if !ours {
        // A live run's entry may look foreign for an instant (being created or removed):
        // its lock says so.
        let found = inspect(stale)?;
        if matches!(found, Found::File | Found::Folder) {
            lock_named(stale, found == Found::Folder, output)?;
        }
        bail!(
            "{} is in the way: not a staging entry host left; move it away",
            stale.display()
        );
    }
    // A live run's staging entry is locked: never removed under it.
    let Named::Locked(_lock) = lock_named(stale, want_folder, output)? else {
        return Ok(());
    };
    let removed = if want_folder {
        remove_marked(stale)
    } else {
        fs::remove_file(stale)
    };
    removed.with_context(|| format!("cannot remove the stale {}", stale.display()))
}

/// Deletes a staging folder so that a kill at any moment leaves it recognisably ours: the
/// mark is written first and removed last, when nothing else is left.
fn remove_marked(dir: &Path) -> std::io::Result<()> {
    let mark = dir.join(STAGING_MARK);
    fs::write(&mark, b"")?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == STAGING_MARK {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    fs::remove_file(&mark)?;
    fs::remove_dir(dir)
}

/// A claimed folder output: the new run is written into its staging folder and swapped in by
/// [`OutputDir::commit`]; dropped uncommitted, the staging folder is removed.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    staging: PathBuf,
    committed: bool,
    /// The staging folder, open and locked until the run ends: every file is created through
    /// it, and its name is checked against it before the folder is swapped in or deleted (so
    /// a folder or symlink put at that name during the run is never written into or emptied).
    staging_dir: FolderLock,
    /// The old run's folder (if any), locked until the run ends.
    _locks: Vec<FolderLock>,
}

impl OutputDir {
    /// Claims folder `path` for `flag` (see the module rules), clears what a killed run left
    /// beside it and creates the staging folder. `inputs` may not lie inside `path`.
    pub fn claim(path: &Path, flag: &str, inputs: &[&Path]) -> Result<OutputDir> {
        check_parent(path, flag)?;
        let staging = staging_path(path)?;
        let aside = beside(path, ASIDE_SUFFIX)?;
        let mut locks = Vec::new();
        // A run killed between moving the old folder aside and renaming the new one in: the
        // old run (host's: it has its file list) goes back; a live run there holds it locked
        // (an error, nothing moved). Its lock is then the output's.
        let mut restored = None;
        if inspect(path)? == Found::Absent
            && inspect(&aside)? == Found::Folder
            && inspect(&aside.join(FILE_LIST))? == Found::File
        {
            if let Named::Locked(lock) = lock_named(&aside, true, path)? {
                fs::rename(&aside, path)
                    .with_context(|| format!("cannot restore {}", path.display()))?;
                restored = Some(lock);
            }
        }
        match inspect(path)? {
            Found::Absent => {}
            Found::Folder => {
                locks.push(match restored {
                    Some(lock) => lock,
                    None => lock_folder(path, path)?,
                });
                if let Some(entry) = unlisted_entry(path)? {
                    if inspect(&path.join(FILE_LIST))? != Found::File && is_host_run(path) {
                        bail!(
                            "{flag} {}: written by an older host (no {FILE_LIST} list of its \
                             files), so host cannot tell its files from yours; choose a new \
                             folder or empty this one",
                            path.display()
                        );
                    }
                    bail!(
                        "{flag} {}: {} is in the way (host did not write it there); choose a \
                         new folder or move it away",
                        path.display(),
                        entry.display()
                    );
                }
            }
            Found::File => bail!("{flag} {}: a file is in the way", path.display()),
            Found::Special(what) => bail!("{flag} {}: a {what} is in the way", path.display()),
        }
        check_inputs(path, flag, inputs)?;
        remove_stale(&staging, true, path)?;
        remove_stale(&aside, true, path)?;
        let another_run = || {
            format!(
                "{}: another host run is writing this output ({} is in use); wait for it or \
                 choose another name",
                path.display(),
                staging.display()
            )
        };
        match fs::create_dir(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(another_run()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create folder {}", staging.display()))
            }
        }
        // Locked by name, checked against the inode: a concurrent claim may have removed our
        // new, still empty folder as stale and made its own in between.
        let Named::Locked(staging_dir) = lock_named(&staging, true, path)? else {
            bail!(another_run());
        };
        let dir = OutputDir {
            path: path.to_path_buf(),
            staging,
            committed: false,
            staging_dir,
            _locks: locks,
        };
        create_in(&dir.staging_dir.file, Path::new(STAGING_MARK))
            .with_context(|| format!("cannot write in {}", dir.staging.display()))?;
        Ok(dir)
    }

    /// The final folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the files are written until commit.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Whether the staging name still holds the folder this run created.
    fn staging_is_ours(&self) -> bool {
        names_file(&self.staging, &self.staging_dir.file)
    }

    /// Puts the staged run at the folder's path and deletes the run it replaces.
    pub fn commit(mut self) -> Result<()> {
        if !self.staging_is_ours() {
            self.committed = true; // not ours to delete either
            bail!(
                "{}: its staging folder {} was replaced during the run (not by this run); \
                 nothing was moved or deleted",
                self.path.display(),
                self.staging.display()
            );
        }
        write_file_list(&self.staging, &self.staging_dir.file)?;
        let mark = self.staging.join(STAGING_MARK);
        fs::remove_file(&mark).with_context(|| format!("cannot remove {}", mark.display()))?;
        let unlisted = match inspect(&self.path)? {
            Found::Absent => None,
            Found::Folder => unlisted_entry(&self.path)?,
            _ => Some(self.path.clone()),
        };
        if let Some(entry) = unlisted {
            // The finished run is kept (a staging folder with its list: the next run on this
            // output clears it), not dropped with the error.
            self.committed = true;
            bail!(
                "{}: {} appeared during the run (host did not write it); the new run is in {} \
                 until the next run on this output: move it away and rerun",
                self.path.display(),
                entry.display(),
                self.staging.display()
            );
        }
        if inspect(&self.path)? == Found::Absent {
            rename(&self.staging, &self.path)?;
        } else {
            self.swap_in()?;
        }
        self.committed = true;
        Ok(())
    }

    /// Exchanges the staging folder with the old one (the old run then sits at the staging
    /// name, and is deleted); without exchange support, moves the old folder aside first.
    fn swap_in(&self) -> Result<()> {
        match exchange(&self.staging, &self.path) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                let aside = beside(&self.path, ASIDE_SUFFIX)?;
                rename(&self.path, &aside)?;
                rename(&self.staging, &self.path)?;
                return remove_all(&aside);
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot move the new run into {}", self.path.display())
                })
            }
        }
        remove_all(&self.staging)
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed && self.staging_is_ours() {
            let _ = remove_marked(&self.staging);
        }
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("cannot rename to {}", to.display()))
}

fn remove_all(dir: &Path) -> Result<()> {
    remove_marked(dir).with_context(|| format!("cannot remove the old run {}", dir.display()))
}

/// renameat2(RENAME_EXCHANGE): swaps two paths atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A claimed file output: absent or a regular file, not an input, its folder existing.
#[derive(Debug, Clone)]
pub struct OutputFile {
    path: PathBuf,
    staging: PathBuf,
}

impl OutputFile {
    /// `-`: the text goes to stdout.
    pub fn is_stdout(path: &Path) -> bool {
        path.as_os_str() == "-"
    }

    /// Claims file `path` for `flag` (see the module rules) and removes a staging file a
    /// killed run left beside it.
    pub fn claim(path: &Path, flag: &str, inputs: &[&Path]) -> Result<OutputFile> {
        if Self::is_stdout(path) {
            bail!("{flag} -: this output is not text; give a file name");
        }
        check_parent(path, flag)?;
        match inspect(path)? {
            Found::Absent | Found::File => {}
            Found::Folder => bail!("{flag} {}: is a folder", path.display()),
            Found::Special(what) => bail!(
                "{flag} {}: is a {what}; host replaces only regular files",
                path.display()
            ),
        }
        check_inputs(path, flag, inputs)?;
        let staging = staging_path(path)?;
        remove_stale(&staging, false, path)?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            staging,
        })
    }

    /// The output's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the bytes are written until commit.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Opens the staging file for writing, empty and locked until the returned file (and
    /// every clone of it) is closed: keep it open until after [`OutputFile::commit`], so a
    /// second run on this output stops instead of writing into the same staging file (and
    /// the first renaming half of the second's bytes into place). Never follows a symlink.
    pub fn open_staging(&self) -> Result<fs::File> {
        open_locked(&self.staging, &self.path)
    }

    /// Renames the staged bytes over the path, after checking again that only a regular file
    /// is replaced.
    pub fn commit(&self) -> Result<()> {
        match inspect(&self.path)? {
            Found::Absent | Found::File => {}
            Found::Folder => bail!("{}: became a folder during the run", self.path.display()),
            Found::Special(what) => bail!(
                "{}: became a {what} during the run; not replaced",
                self.path.display()
            ),
        }
        rename(&self.staging, &self.path)
    }
}

/// Suffix of the lock file a long run holds beside its main output ([`RunLock`]).
const LOCK_SUFFIX: &str = ".host-lock";

/// An flock on `.NAME.host-lock` beside an output, held for a whole run by commands that
/// replace their outputs several times (train's snapshots): a second run on the same output
/// stops at its start instead of interleaving its snapshots with the first's. Removed when
/// the run ends; after SIGKILL the next run takes it over.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    file: fs::File,
}

impl RunLock {
    /// Locks output `output` for this run.
    pub fn acquire(output: &Path) -> Result<RunLock> {
        let path = beside(output, LOCK_SUFFIX)?;
        let file = open_locked(&path, output)?;
        Ok(RunLock { path, file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if names_file(&self.path, &self.file) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The output files of one command, all-or-nothing: a folder output or single files.
#[derive(Debug)]
pub struct Outputs {
    dir: Option<OutputDir>,
    files: Vec<OutputFile>,
    /// The file outputs' staging files, open (so locked) until the outputs are dropped.
    held: Vec<fs::File>,
    /// The files written, as given to `write` (relative to the folder).
    written: Vec<PathBuf>,
    committed: bool,
}

impl Outputs {
    /// Outputs under folder `dir` (flag `--out`), claimed now, before any work; `inputs` may
    /// not lie inside it.
    pub fn in_folder(dir: &Path, inputs: &[&Path]) -> Result<Outputs> {
        Ok(Outputs {
            dir: Some(OutputDir::claim(dir, "--out", inputs)?),
            files: Vec::new(),
            held: Vec::new(),
            written: Vec::new(),
            committed: false,
        })
    }

    /// Outputs that are single files anywhere (claim each early with [`Outputs::check_file`]).
    pub fn files() -> Outputs {
        Outputs {
            dir: None,
            files: Vec::new(),
            held: Vec::new(),
            written: Vec::new(),
            committed: false,
        }
    }

    /// Checks now, before any work, that file output `path` of `flag` may be written later.
    pub fn check_file(path: &Path, flag: &str, inputs: &[&Path]) -> Result<()> {
        OutputFile::claim(path, flag, inputs).map(drop)
    }

    /// Where the files written so far are (the staging folder until commit).
    pub fn root(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new(""), |d| d.staging.as_path())
    }

    /// Every file written so far, relative to the root, in order.
    pub fn written_files(&self) -> &[PathBuf] {
        &self.written
    }

    /// Where the written output `rel` sits until commit (relative to [`Outputs::root`]).
    pub fn staged(&self, rel: &Path) -> Result<PathBuf> {
        if self.dir.is_some() {
            return Ok(rel.to_path_buf());
        }
        self.files
            .iter()
            .find(|f| f.path == rel)
            .map(|f| f.staging.clone())
            .with_context(|| format!("{} was not written", rel.display()))
    }

    /// Opens the file `rel` is staged in, empty; creates its sub-folders in the staging folder.
    fn stage(&mut self, rel: &Path, shown: &Path) -> Result<fs::File> {
        if let Some(dir) = &self.dir {
            return create_in(&dir.staging_dir.file, rel)
                .with_context(|| format!("cannot write {}", shown.display()));
        }
        if self.files.iter().any(|f| f.path == rel) {
            bail!("{} is named twice as an output", rel.display());
        }
        let file = OutputFile::claim(rel, "output", &[])?;
        let staged = file.open_staging()?;
        self.held.push(
            staged
                .try_clone()
                .with_context(|| format!("cannot write {}", shown.display()))?,
        );
        self.files.push(file);
        Ok(staged)
    }

    /// Writes `bytes` to `rel` (relative to the folder; in file mode, the file's path).
    pub fn write(&mut self, rel: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
        self.write_with(rel, |w| Ok(w.write_all(bytes)?))
    }

    /// Writes `rel` as [`Outputs::write`] does, from a writer `fill` streams into (so a large
    /// file never sits in memory).
    pub fn write_with(
        &mut self,
        rel: impl AsRef<Path>,
        fill: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let rel = rel.as_ref();
        super::interrupt::check()?;
        let shown = self
            .dir
            .as_ref()
            .map_or(rel.to_path_buf(), |d| d.path.join(rel));
        let file = self.stage(rel, &shown)?;
        let mut w = BufWriter::new(file);
        fill(&mut w).with_context(|| format!("cannot write {}", shown.display()))?;
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", shown.display()))?;
        self.written.push(rel.to_path_buf());
        Ok(())
    }

    /// Copies the file `src` to `rel`, streamed.
    pub fn copy_from(&mut self, rel: impl AsRef<Path>, src: &Path) -> Result<()> {
        let mut file = tweedie_nn::input::open_regular(src)?;
        self.write_with(rel, |w| {
            std::io::copy(&mut file, w)
                .with_context(|| format!("cannot read {}", src.display()))?;
            Ok(())
        })
    }

    /// Puts every output in place: the folder as a unit, the files each by one rename.
    pub fn commit(mut self) -> Result<()> {
        super::interrupt::check()?;
        if let Some(dir) = self.dir.take() {
            dir.commit()?;
        }
        for file in &self.files {
            file.commit()?;
        }
        self.committed = true;
        Ok(())
    }
}

#[cfg(test)]
impl Outputs {
    /// What SIGKILL leaves: the staged files stay, the locks go with the process.
    fn killed(mut self) {
        // Nothing is removed (as if no Drop ran); the descriptors close, releasing the locks.
        if let Some(dir) = self.dir.as_mut() {
            dir.committed = true;
        }
        self.committed = true;
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if !self.committed {
            // Only the staging files still ours: a file already renamed into place leaves
            // its staging name free for another run.
            for (file, held) in self.files.iter().zip(&self.held) {
                if names_file(&file.staging, held) {
                    let _ = fs::remove_file(&file.staging);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn scratch(name: &str) -> PathBuf {
        let base =
            std::env::temp_dir().join(format!("tweedie-policy-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        base
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    const RUN: &[u8] = b"{\"command\": \"sample\"}";

    #[test]
    fn dropped_outputs_leave_nothing_and_committed_ones_stay() {
        let base = scratch("drop");
        let dir = base.join("run");
        {
            let mut o = Outputs::in_folder(&dir, &[]).unwrap();
            o.write("a.txt", b"1").unwrap();
            o.write("sub/b.txt", b"2").unwrap();
            assert!(!dir.exists(), "nothing appears before commit");
        }
        assert!(names(&base).is_empty(), "a failed run leaves nothing");
        let mut o = Outputs::in_folder(&dir, &[]).unwrap();
        o.write("a.txt", b"1").unwrap();
        o.commit().unwrap();
        assert_eq!(names(&dir), [FILE_LIST, "a.txt"]);
        assert_eq!(fs::read(dir.join(FILE_LIST)).unwrap(), b"a.txt\n");
        assert_eq!(names(&base), ["run"]);
        let e = Outputs::in_folder(&base.join("missing/run"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_host_run_is_replaced_as_a_unit_and_foreign_folders_are_refused() {
        let base = scratch("replace");
        let dir = base.join("run");
        let mut o = Outputs::in_folder(&dir, &[]).unwrap();
        o.write("run.json", RUN).unwrap();
        o.write("sample_0001.png", b"old").unwrap();
        o.commit().unwrap();
        let mut o = Outputs::in_folder(&dir, &[]).unwrap();
        o.write("run.json", RUN).unwrap();
        o.write("img/mean.png", b"new").unwrap();
        o.commit().unwrap();
        assert_eq!(
            names(&dir),
            [FILE_LIST, "img", "run.json"],
            "no stale files"
        );
        assert_eq!(names(&base), ["run"]);
        // A listed run in sub-folders is replaced again (restore of a folder of images).
        let mut o = Outputs::in_folder(&dir, &[]).unwrap();
        o.write("run.json", RUN).unwrap();
        o.commit().unwrap();
        assert_eq!(names(&dir), [FILE_LIST, "run.json"]);

        // What the user put in a host folder is never deleted: the rerun is refused.
        for added in ["notes.txt", "mine/data.csv"] {
            let path = dir.join(added);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"user").unwrap();
            let e = format!("{:#}", Outputs::in_folder(&dir, &[]).unwrap_err());
            let first = added.split('/').next().unwrap();
            assert!(e.contains(&format!("run/{first} is in the way")), "{e}");
            assert_eq!(fs::read(&path).unwrap(), b"user");
            // Added while a run is writing: the commit refuses, the file stays.
            fs::remove_dir_all(dir.join(first)).ok();
            fs::remove_file(dir.join(first)).ok();
            let mut o = Outputs::in_folder(&dir, &[]).unwrap();
            o.write("run.json", RUN).unwrap();
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"user").unwrap();
            let e = format!("{:#}", o.commit().unwrap_err());
            assert!(
                e.contains(&format!("{first} appeared during the run")),
                "{e}"
            );
            assert_eq!(fs::read(&path).unwrap(), b"user");
            assert!(
                base.join(".run.host-staging/run.json").is_file(),
                "the finished run is kept until the next run on this output"
            );
            fs::remove_dir_all(dir.join(first)).ok();
            fs::remove_file(dir.join(first)).ok();
        }
        // A name host never writes (not UTF-8) is never taken for a listed one.
        let odd = dir.join(std::ffi::OsStr::from_bytes(b"a\xff"));
        fs::write(&odd, b"user").unwrap();
        let e = format!("{:#}", Outputs::in_folder(&dir, &[]).unwrap_err());
        assert!(e.contains("is in the way"), "{e}");
        fs::remove_file(&odd).unwrap();
        // A folder of an older host (a run record, no list) is refused, not deleted.
        let old = base.join("old");
        fs::create_dir(&old).unwrap();
        fs::write(old.join("run.json"), RUN).unwrap();
        let e = format!("{:#}", Outputs::in_folder(&old, &[]).unwrap_err());
        assert!(e.contains("written by an older host"), "{e}");
        assert_eq!(names(&old), ["run.json"]);

        let foreign = base.join("mine");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("sample_0000.png"), b"old").unwrap();
        let e = format!("{:#}", Outputs::in_folder(&foreign, &[]).unwrap_err());
        assert!(e.contains("mine/sample_0000.png is in the way"), "{e}");
        assert_eq!(fs::read(foreign.join("sample_0000.png")).unwrap(), b"old");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_killed_runs_staging_is_removed_by_the_next_claim() {
        let base = scratch("stale");
        let dir = base.join("run");
        Outputs::in_folder(&dir, &[]).unwrap().killed();
        assert_eq!(names(&base), [".run.host-staging"]);
        let mut o = Outputs::in_folder(&dir, &[]).unwrap();
        o.write("run.json", RUN).unwrap();
        o.commit().unwrap();
        assert_eq!(names(&base), ["run"]);
        // Something foreign under the staging name is not touched.
        fs::create_dir(base.join(".run.host-staging")).unwrap();
        fs::write(base.join(".run.host-staging/x"), b"").unwrap();
        let e = format!("{:#}", Outputs::in_folder(&dir, &[]).unwrap_err());
        assert!(e.contains(".run.host-staging is in the way"), "{e}");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_second_run_on_a_live_output_stops_without_touching_it() {
        let base = scratch("lock");
        let dir = base.join("run");
        let mut first = Outputs::in_folder(&dir, &[]).unwrap();
        first.write("run.json", RUN).unwrap();
        let e = format!("{:#}", Outputs::in_folder(&dir, &[]).unwrap_err());
        assert!(e.contains("another host run is writing"), "{e}");
        first.commit().unwrap();
        assert_eq!(names(&dir), [FILE_LIST, "run.json"]);
        // A live run over an existing output also holds the old one.
        let mut second = Outputs::in_folder(&dir, &[]).unwrap();
        let e = format!("{:#}", Outputs::in_folder(&dir, &[]).unwrap_err());
        assert!(e.contains("another host run is writing"), "{e}");
        second.write("b.txt", b"2").unwrap();
        second.commit().unwrap();
        assert_eq!(names(&dir), [FILE_LIST, "b.txt"]);
        drop(Outputs::in_folder(&dir, &[]).unwrap()); // released at the end of a run
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn file_outputs_replace_only_regular_files_and_never_inputs() {
        let base = scratch("files");
        let link = base.join("link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let e = format!(
            "{:#}",
            Outputs::check_file(&link, "--out", &[]).unwrap_err()
        );
        assert!(e.contains("is a symlink"), "{e}");
        let e = format!(
            "{:#}",
            Outputs::check_file(&base, "--out", &[]).unwrap_err()
        );
        assert!(e.contains("is a folder"), "{e}");
        let e = format!(
            "{:#}",
            Outputs::check_file(Path::new("/dev/null"), "--out", &[]).unwrap_err()
        );
        assert!(e.contains("is a character device"), "{e}");
        let input = base.join("in.png");
        fs::write(&input, b"x").unwrap();
        let e = format!(
            "{:#}",
            Outputs::check_file(&input, "out", &[&input]).unwrap_err()
        );
        assert!(e.contains("is an input"), "{e}");

        let path = base.join("y.csv");
        fs::write(&path, b"old").unwrap();
        {
            let mut o = Outputs::files();
            o.write(&path, b"new").unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"old", "replaced only at commit");
        }
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let mut o = Outputs::files();
        o.write(&path, b"new").unwrap();
        assert!(o.write(&path, b"again").is_err(), "one path, one output");
        o.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(names(&base), ["in.png", "link", "y.csv"]);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_second_run_on_a_live_file_output_stops_without_touching_it() {
        let base = scratch("file-lock");
        let path = base.join("table.json");
        let mut first = Outputs::files();
        first.write(&path, b"first").unwrap();
        // Neither the early check nor a write of a second run touches the first's staging.
        let e = format!(
            "{:#}",
            Outputs::check_file(&path, "--out", &[]).unwrap_err()
        );
        assert!(e.contains("another host run is writing"), "{e}");
        let mut second = Outputs::files();
        let e = format!("{:#}", second.write(&path, b"second").unwrap_err());
        assert!(e.contains("another host run is writing"), "{e}");
        drop(second);
        first.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(names(&base), ["table.json"]);
        // A killed run's staging file is cleared by the next run.
        let mut killed = Outputs::files();
        killed.write(&path, b"half").unwrap();
        killed.killed();
        let mut third = Outputs::files();
        third.write(&path, b"third").unwrap();
        third.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"third");
        assert_eq!(names(&base), ["table.json"]);
        // A symlink or FIFO put at the staging name after the claim is never written
        // through, nor waited on.
        let target = base.join("target");
        fs::write(&target, b"keep").unwrap();
        let claimed = OutputFile::claim(&path, "--out", &[]).unwrap();
        std::os::unix::fs::symlink(&target, staging_path(&path).unwrap()).unwrap();
        assert!(claimed.open_staging().is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        fs::remove_file(staging_path(&path).unwrap()).unwrap();
        let fifo = std::ffi::CString::new(staging_path(&path).unwrap().as_os_str().as_bytes());
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.unwrap().as_ptr(), 0o600) }, 0);
        let e = format!("{:#}", claimed.open_staging().unwrap_err());
        assert!(e.contains(".table.json.host-staging is in the way"), "{e}");
        fs::remove_file(staging_path(&path).unwrap()).unwrap();
        // A hard link to a file put there: the name is replaced, the file keeps its bytes.
        fs::hard_link(&target, staging_path(&path).unwrap()).unwrap();
        let mut staged = claimed.open_staging().unwrap();
        staged.write_all(b"new").unwrap();
        claimed.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_staging_folder_replaced_during_the_run_is_never_written_into_nor_emptied() {
        let base = scratch("swapped");
        let dir = base.join("run");
        let staging = staging_path(&dir).unwrap();
        let user = base.join("user");
        fs::create_dir(&user).unwrap();
        fs::write(user.join("a.txt"), b"mine").unwrap();
        let swap = |moved: &str| {
            fs::rename(&staging, base.join(moved)).unwrap();
            std::os::unix::fs::symlink(&user, &staging).unwrap();
        };
        // Committed: refused, nothing moved.
        let mut out = Outputs::in_folder(&dir, &[]).unwrap();
        out.write("run.json", RUN).unwrap();
        swap("moved1");
        out.write("b.txt", b"2").unwrap(); // through the open folder, not the link
        let e = format!("{:#}", out.commit().unwrap_err());
        assert!(e.contains("was replaced during the run"), "{e}");
        assert_eq!(names(&user), ["a.txt"]);
        assert!(!dir.exists());
        assert!(base.join("moved1/b.txt").is_file());
        // Dropped (an error, a signal): nothing deleted through the link.
        fs::remove_file(&staging).unwrap();
        let mut out = Outputs::in_folder(&dir, &[]).unwrap();
        out.write("run.json", RUN).unwrap();
        swap("moved2");
        drop(out);
        assert_eq!(names(&user), ["a.txt"]);
        assert_eq!(fs::read(user.join("a.txt")).unwrap(), b"mine");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_killed_swap_is_restored_on_the_first_try_and_only_if_it_is_hosts() {
        let base = scratch("aside");
        let dir = base.join("run");
        let mut first = Outputs::in_folder(&dir, &[]).unwrap();
        first.write("run.json", RUN).unwrap();
        first.commit().unwrap();
        // Killed between moving the old run aside and renaming the new one in.
        let aside = beside(&dir, ASIDE_SUFFIX).unwrap();
        fs::rename(&dir, &aside).unwrap();
        let mut again = Outputs::in_folder(&dir, &[]).unwrap();
        again.write("b.txt", b"2").unwrap();
        again.commit().unwrap();
        assert_eq!(names(&dir), [FILE_LIST, "b.txt"]);
        assert_eq!(names(&base), ["run"]);
        // A folder of the user's at that name is not host's old run: not moved.
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir(&aside).unwrap();
        fs::write(aside.join("note"), b"mine").unwrap();
        let e = format!("{:#}", Outputs::in_folder(&dir, &[]).unwrap_err());
        assert!(e.contains("is in the way"), "{e}");
        assert_eq!(names(&aside), ["note"]);
        assert!(!dir.exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_run_lock_stops_a_second_run_and_is_removed_at_the_end() {
        let base = scratch("run-lock");
        let out = base.join("w.safetensors");
        let first = RunLock::acquire(&out).unwrap();
        let e = format!("{:#}", RunLock::acquire(&out).unwrap_err());
        assert!(e.contains("another host run is writing"), "{e}");
        drop(first);
        assert!(names(&base).is_empty(), "removed at the end");
        // After SIGKILL (the file stays, the lock goes) the next run takes it over.
        fs::write(base.join(".w.safetensors.host-lock"), b"").unwrap();
        drop(RunLock::acquire(&out).unwrap());
        assert!(names(&base).is_empty());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_live_staging_file_is_never_removed_as_stale() {
        let base = scratch("stale-race");
        let output = base.join("t.json");
        let staging = staging_path(&output).unwrap();
        // A live run's staging file at the name: a claim stops, nothing removed.
        let live = OutputFile::claim(&output, "--out", &[]).unwrap();
        let held = live.open_staging().unwrap();
        let e = format!("{:#}", remove_stale(&staging, false, &output).unwrap_err());
        assert!(e.contains("another host run is writing"), "{e}");
        assert!(names_file(&staging, &held));
        drop(held);
        // Unlocked (a killed run's): removed.
        remove_stale(&staging, false, &output).unwrap();
        assert!(names(&base).is_empty());
        fs::remove_dir_all(&base).unwrap();
    }
}
