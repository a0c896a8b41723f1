//! Device global memory for the interpreter: allocations addressed by u64 device
//! pointers. Pointers start high (like real device pointers), are 256-byte aligned
//! and never 0, and allocations are separated by unmapped guard gaps so that an
//! access just past an allocation's end is an error rather than a silent hit on a
//! neighbour. Lookups binary-search a sorted vector and remember the last hit,
//! because kernels touch the same few buffers over and over.

use crate::SimError;
use std::cell::Cell;

/// Start of the global heap; below it sit the generic-address windows of shared
/// and local memory (see `exec`).
pub(crate) const GLOBAL_BASE: u64 = 0x0000_7f00_0000_0000;
const GUARD: u64 = 4096;

struct Alloc {
    base: u64,
    data: Vec<u8>,
}

/// Simulated device memory (the global state space).
pub struct Memory {
    allocs: Vec<Alloc>,
    next: u64,
    last: Cell<usize>,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

impl Memory {
    pub fn new() -> Self {
        Memory { allocs: Vec::new(), next: GLOBAL_BASE, last: Cell::new(0) }
    }

    /// Allocates `bytes` zeroed bytes; returns a 256-byte aligned device pointer.
    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let base = self.next;
        let size = (bytes as u64).max(1);
        self.next = (base + size + GUARD + 255) & !255;
        // `next` only grows, so the vector stays sorted by base.
        self.allocs.push(Alloc { base, data: vec![0; bytes] });
        base
    }

    /// Frees an allocation by its base pointer.
    pub fn free(&mut self, ptr: u64) -> Result<(), SimError> {
        match self.allocs.binary_search_by_key(&ptr, |a| a.base) {
            Ok(i) => {
                self.allocs.remove(i);
                self.last.set(0);
                Ok(())
            }
            Err(_) => Err(SimError::Memory(format!("free of {ptr:#x}, which is not the start of an allocation"))),
        }
    }

    /// Copies host bytes to device memory at `ptr` (which may point inside an allocation).
    pub fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), SimError> {
        let s = self.slice_mut(ptr, data.len()).ok_or_else(|| SimError::Memory(format!("write of {} bytes at {ptr:#x} is out of bounds", data.len())))?;
        s.copy_from_slice(data);
        Ok(())
    }

    /// Copies device memory at `ptr` to host bytes.
    pub fn read(&self, ptr: u64, out: &mut [u8]) -> Result<(), SimError> {
        let s = self.slice(ptr, out.len()).ok_or_else(|| SimError::Memory(format!("read of {} bytes at {ptr:#x} is out of bounds", out.len())))?;
        out.copy_from_slice(s);
        Ok(())
    }

    fn find(&self, ptr: u64, len: usize) -> Option<usize> {
        let fits = |a: &Alloc| ptr >= a.base && ptr.checked_add(len as u64).is_some_and(|e| e <= a.base + a.data.len() as u64);
        let l = self.last.get();
        if let Some(a) = self.allocs.get(l) {
            if fits(a) {
                return Some(l);
            }
        }
        let i = match self.allocs.binary_search_by_key(&ptr, |a| a.base) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        if fits(&self.allocs[i]) {
            self.last.set(i);
            Some(i)
        } else {
            None
        }
    }

    pub(crate) fn slice(&self, ptr: u64, len: usize) -> Option<&[u8]> {
        let i = self.find(ptr, len)?;
        let a = &self.allocs[i];
        let off = (ptr - a.base) as usize;
        Some(&a.data[off..off + len])
    }

    pub(crate) fn slice_mut(&mut self, ptr: u64, len: usize) -> Option<&mut [u8]> {
        let i = self.find(ptr, len)?;
        let a = &mut self.allocs[i];
        let off = (ptr - a.base) as usize;
        Some(&mut a.data[off..off + len])
    }
}
