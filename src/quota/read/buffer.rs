//! The buffer a body that arrives in several pieces is joined in (phase:
//! classify). Small, it is a `Vec`. From [`MAPPED_FROM`] on (Linux) it is
//! pages of its own that the kernel grows in place (`mremap`), so a large
//! body is never copied to grow: a growing `Vec` copies into each larger
//! allocation, the old and the new resident together, and the allocator
//! keeps the freed ones resident a while (a 10 MB JSON body grew the peak
//! RSS by 2.49 bodies that way; BENCHMARKS.md). Where the pages cannot be
//! had it goes on as a `Vec`.

/// The capacity from which the buffer is pages of its own: below it a copy
/// costs less than the system calls. Never sized from a `Content-Length`:
/// a buffer this large holds at least half as many bytes that really
/// arrived, all taken from the body budget, so the mappings alive at once
/// (each one of the process's limited count, `vm.max_map_count`) number
/// at most `body_budget_bytes` / 128 KiB, whatever clients declare.
pub(super) const MAPPED_FROM: usize = 256 * 1024;

/// Bytes joined as they arrive, with room made ahead by [`Self::reserve_exact`].
pub(super) struct BodyBuffer(Kind);

enum Kind {
    Heap(Vec<u8>),
    #[cfg(target_os = "linux")]
    Mapped {
        /// Private anonymous pages: written ones are resident, the rest
        /// only reserved.
        pages: memmap2::MmapMut,
        len: usize,
    },
}

impl BodyBuffer {
    /// An empty buffer, no room made.
    pub(super) fn new() -> Self {
        Self(Kind::Heap(Vec::new()))
    }

    /// Bytes held.
    pub(super) fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// Room made, bytes held included.
    pub(super) fn capacity(&self) -> usize {
        match &self.0 {
            Kind::Heap(vec) => vec.capacity(),
            #[cfg(target_os = "linux")]
            Kind::Mapped { pages, .. } => pages.len(),
        }
    }

    /// Makes room for exactly `additional` more bytes than are held: the
    /// bytes move into pages of their own once the room reaches
    /// [`MAPPED_FROM`], and those pages grow in place.
    pub(super) fn reserve_exact(&mut self, additional: usize) {
        let target = self.len().saturating_add(additional);
        if target <= self.capacity() {
            return;
        }
        #[cfg(target_os = "linux")]
        if target >= MAPPED_FROM && self.map_to(target) {
            return;
        }
        if let Kind::Heap(vec) = &mut self.0 {
            vec.reserve_exact(additional);
        } else {
            // Pages that cannot grow: the bytes go back to the heap.
            let mut vec = Vec::with_capacity(target);
            vec.extend_from_slice(self.as_ref());
            self.0 = Kind::Heap(vec);
        }
    }

    /// Appends `data`, making room if [`Self::reserve_exact`] made too little.
    pub(super) fn extend_from_slice(&mut self, data: &[u8]) {
        if self.capacity() - self.len() < data.len() {
            self.reserve_exact(data.len());
        }
        match &mut self.0 {
            Kind::Heap(vec) => vec.extend_from_slice(data),
            #[cfg(target_os = "linux")]
            Kind::Mapped { pages, len } => {
                pages[*len..*len + data.len()].copy_from_slice(data);
                *len += data.len();
            }
        }
    }

    /// Grows the pages to `capacity` bytes, or moves the heap's bytes into
    /// new pages of that size; false when the kernel refused.
    #[cfg(target_os = "linux")]
    fn map_to(&mut self, capacity: usize) -> bool {
        match &mut self.0 {
            Kind::Mapped { pages, .. } => {
                // SAFETY: `remap`'s hazard is a file-backed map grown past
                // its file's end; these pages are anonymous, so the new ones
                // are zeroed memory of this map. `&mut self` means no slice
                // of the old pages is alive to dangle if they move.
                let grown =
                    unsafe { pages.remap(capacity, memmap2::RemapOptions::new().may_move(true)) };
                grown.is_ok()
            }
            Kind::Heap(vec) => {
                let Ok(mut pages) = memmap2::MmapOptions::new().len(capacity).map_anon() else {
                    return false;
                };
                pages[..vec.len()].copy_from_slice(vec);
                self.0 = Kind::Mapped {
                    len: vec.len(),
                    pages,
                };
                true
            }
        }
    }
}

impl AsRef<[u8]> for BodyBuffer {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            Kind::Heap(vec) => vec,
            #[cfg(target_os = "linux")]
            Kind::Mapped { pages, len } => &pages[..*len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_large_buffer_grows_in_pages_of_its_own() {
        let mut buffer = BodyBuffer::new();
        buffer.reserve_exact(1000);
        buffer.extend_from_slice(&[1; 1000]);
        assert!(matches!(buffer.0, Kind::Heap(_)));
        buffer.reserve_exact(MAPPED_FROM);
        buffer.extend_from_slice(&[2; 4096]);
        #[cfg(target_os = "linux")]
        assert!(matches!(buffer.0, Kind::Mapped { .. }));
        assert_eq!(buffer.capacity(), 1000 + MAPPED_FROM);
        // Past its room: grown again, in place or moved, bytes kept.
        buffer.extend_from_slice(&vec![3; MAPPED_FROM]);
        assert_eq!(buffer.len(), 1000 + 4096 + MAPPED_FROM);
        let bytes = buffer.as_ref();
        assert!(bytes[..1000].iter().all(|&b| b == 1));
        assert!(bytes[1000..5096].iter().all(|&b| b == 2));
        assert!(bytes[5096..].iter().all(|&b| b == 3));
    }

    proptest! {
        /// However the pieces and the room made come, the buffer holds the
        /// pieces joined, no more.
        #[test]
        fn holds_the_pieces_joined(
            pieces in prop::collection::vec((0usize..300_000, any::<u8>(), 0usize..700_000), 0..12),
        ) {
            let mut buffer = BodyBuffer::new();
            let mut expected = Vec::new();
            for (size, byte, room) in pieces {
                buffer.reserve_exact(room);
                let piece = vec![byte; size];
                buffer.extend_from_slice(&piece);
                expected.extend_from_slice(&piece);
                prop_assert!(buffer.capacity() >= buffer.len());
            }
            prop_assert_eq!(buffer.as_ref(), &expected[..]);
        }
    }
}
