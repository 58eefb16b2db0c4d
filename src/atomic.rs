//! The one way a file is replaced: whole or not at all. The upgrade
//! history and the handover record are written so.

use std::path::Path;

/// Replaces a file so that a crash leaves the old or the new text, never a
/// mix: writes a sibling under a name no other writer uses (every instance
/// is PID 1 in its container, so a pid is not enough), fsyncs it, renames it
/// over the original, and fsyncs the directory so that the rename itself
/// survives a power cut.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = format!(
        "{}.{}.{}",
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        crate::secret::token()?
    );
    let tmp = dir.join(format!(".{name}.{unique}.tmp"));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("selfup-proxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("upstream.conf");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writers_with_the_same_pid_never_share_a_temporary_and_a_reader_sees_whole_texts() {
        // Threads of one process stand for instances that are all PID 1.
        let dir = std::env::temp_dir().join(format!("selfup-proxy-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("history.json");
        let texts: Vec<String> = (0..6).map(|w| format!("{w}").repeat(4096 + w)).collect();
        std::fs::write(&path, &texts[0]).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, texts, stop) = (path.clone(), texts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert!(texts.contains(&text), "a torn read of {} bytes", text.len());
                    reads += 1;
                }
                reads
            })
        };
        let writers: Vec<_> = texts
            .iter()
            .cloned()
            .map(|text| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        write_atomically(&path, &text).expect("every write succeeds");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "a temporary was left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
