//! Randomness from the kernel (getrandom(2)): for ephemeral keys, link
//! nonces and endpoint ids.

use std::io;

/// Fills `buf` with random bytes, waiting at boot until the kernel's pool
/// is ready.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length are those of a live, writable
        // slice; getrandom writes at most that many bytes into it.
        let n = unsafe { nix::libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// 32 random bytes.
pub fn bytes32() -> io::Result<[u8; 32]> {
    let mut b = [0; 32];
    fill(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_draws_differ() {
        let (a, b) = (super::bytes32().unwrap(), super::bytes32().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
    }
}
