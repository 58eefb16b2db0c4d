//! Everything selfup parses out of a request or its surroundings: the
//! `<req>` path segment, the Authorization header, image references, the
//! nginx include and the mount table. None of it may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selfup::image_ref::ImageRef;
use selfup::version::Requirement;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Requirement::parse(&text);
    if let Some(token) = selfup::secret::bearer(Some(&text)) {
        assert!(text.len() >= token.len());
        let _ = selfup::secret::matches(token, "expected-token");
    }
    if let Ok(image) = ImageRef::parse(&text) {
        // What parses prints back to something that parses to the same.
        assert_eq!(ImageRef::parse(&image.to_string()), Ok(image));
    }
    let _ = selfup::proxy::primary_of(&text);
    if let Some(id) = selfup::identity::container_id_from_mountinfo(&text) {
        assert_eq!(id.len(), 64);
    }
});
