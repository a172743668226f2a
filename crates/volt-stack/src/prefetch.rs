//! Cache prefetch hints. Routing a fragment touches the state of a hundred shapes, each
//! somewhere else in memory and rarely in cache with thousands of shapes: asking for the
//! next shapes' lines while this one is stored overlaps those misses instead of taking
//! them one after the other.

/// Ask the CPU to start loading the first `max_lines` cache lines of `value` (at most
/// its size). Only a hint: it never faults and changes nothing but timing.
#[inline]
pub(crate) fn prefetch<T>(value: &T, max_lines: usize) {
    let lines = std::mem::size_of::<T>().div_ceil(64).min(max_lines);
    let start = (value as *const T).cast::<u8>();
    for line in 0..lines {
        prefetch_line(start.wrapping_add(line * 64));
    }
}

#[inline]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault, whatever the
    // address; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_leaves_values_as_they_were() {
        let big = [7u8; 1000];
        prefetch(&big, 64);
        let small = 5u64;
        prefetch(&small, 8);
        assert!(big.iter().all(|&b| b == 7));
        assert_eq!(small, 5);
    }
}
