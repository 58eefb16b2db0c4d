//! How a container finds its own id. With host networking the hostname is the
//! host's, and cgroup v2 leaves `/proc/self/cgroup` empty, but the Engine
//! bind-mounts `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` from
//! `/var/lib/docker/containers/<id>/`, and that path shows in the mount table.

/// Reads this process's container id, if it runs in a Docker container.
pub fn own_container_id() -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| container_id_from_mountinfo(&text))
}

/// Finds the 64-hex container id in a mount table, if one is there.
pub fn container_id_from_mountinfo(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let rest = &line[line.find("/containers/")? + "/containers/".len()..];
        let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        (id.len() == 64 && rest[64..].starts_with('/')).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b";

    #[test]
    fn the_id_comes_from_the_hostname_bind_mount() {
        let text = format!(
            "1265 1244 0:120 / / rw,relatime - overlay overlay rw\n\
             1270 1265 254:0 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw\n"
        );
        assert_eq!(container_id_from_mountinfo(&text).as_deref(), Some(ID));
    }

    #[test]
    fn a_host_process_has_no_container_id() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 0:26 / /var/lib/docker/containers rw - ext4 /dev/vda rw\n";
        assert_eq!(container_id_from_mountinfo(text), None);
    }

    #[test]
    fn a_short_hex_run_is_not_an_id() {
        let text = "1 1 0:1 /var/lib/docker/containers/abc123/hostname /etc/hostname rw - ext4 x rw\n";
        assert_eq!(container_id_from_mountinfo(text), None);
    }
}
