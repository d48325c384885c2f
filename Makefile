# r2 — build, install, test. See README.md.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(DESTDIR)$(PREFIX)/bin
MANDIR = $(DESTDIR)$(PREFIX)/share/man
UNITDIR = $(DESTDIR)$(PREFIX)/lib/systemd/system
CARGO ?= cargo
MUSL = x86_64-unknown-linux-musl
HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
OUT := $(or $(CARGO_TARGET_DIR),target)

# On glibc hosts every build is a static PIE: no dynamic loader and no
# shared libc to map, so an idle daemon's RSS is its own text and data
# (about 1.7 MiB instead of 2.7). r2 uses no NSS, iconv or dlopen, the
# parts of glibc that need shared objects at run time. The target is named
# (CARGO_BUILD_TARGET), so that the flag reaches r2 and not the build
# scripts and proc macros of its dependencies (curve25519-dalek's), which
# cannot be static; the build is then in target/HOST/release.
ifneq ($(filter %-linux-gnu,$(HOST)),)
export RUSTFLAGS += -C target-feature=+crt-static
export CARGO_BUILD_TARGET := $(HOST)
RELEASE := $(OUT)/$(HOST)/release
else
RELEASE := $(OUT)/release
endif
# One inlining threshold, 50, for all code in every build. The executable
# is built at opt-level 2 for ChaCha20-Poly1305's sake (Cargo.toml says
# why), and in the whole-program step at its link LLVM would inline std's
# and the dependencies' code at opt-level 2's 225, and r2's own (at "z") at
# 5. Static x86_64 binary (at 8fe97ee) 1,029,704 bytes with it, 1,039,048
# without; the AEAD at 1.22 against 1.26 GB/s, bulk over a pipeline link
# within noise.
export RUSTFLAGS += -C llvm-args=-inline-threshold=50
# The binary that install-files installs; `make install` builds it first.
R2_BIN ?= $(RELEASE)/r2

.PHONY: all build release install install-files install-openwrt uninstall uninstall-openwrt static cross-test test check fmt clippy manlint demo bench stress fuzz clean

all: release

build:
	$(CARGO) build

release:
	$(CARGO) build --release

install: release
	$(MAKE) --no-print-directory install-files

# What `make install` installs, without building: the binary R2_BIN, the man
# pages, and the systemd units (dist/systemd), with the path of the
# installed binaries written into them.
install-files:
	install -d $(BINDIR) $(MANDIR)/man1 $(MANDIR)/man7 $(MANDIR)/man8 $(UNITDIR)
	install -m 0755 $(R2_BIN) $(BINDIR)/r2
	ln -sf r2 $(BINDIR)/r2d
	install -m 0644 man/r2.1 $(MANDIR)/man1/r2.1
	install -m 0644 man/r2.7 $(MANDIR)/man7/r2.7
	install -m 0644 man/r2d.8 $(MANDIR)/man8/r2d.8
	for u in r2d.service r2-link@.service; do \
		sed 's|@BINDIR@|$(PREFIX)/bin|g' dist/systemd/$$u.in >$(UNITDIR)/$$u.tmp && \
		chmod 0644 $(UNITDIR)/$$u.tmp && mv -f $(UNITDIR)/$$u.tmp $(UNITDIR)/$$u || exit 1; \
	done

uninstall:
	rm -f $(BINDIR)/r2 $(BINDIR)/r2d $(MANDIR)/man1/r2.1 $(MANDIR)/man7/r2.7 $(MANDIR)/man8/r2d.8
	rm -f $(UNITDIR)/r2d.service $(UNITDIR)/r2-link@.service

# OpenWrt: the procd init script and its UCI config (dist/openwrt), into an
# image's or a package's root; an existing /etc/config/r2 is kept. The
# binary is not among them: put a build for the router's architecture at
# /usr/bin/r2, with the symlink /usr/bin/r2d.
install-openwrt:
	install -d $(DESTDIR)/etc/init.d $(DESTDIR)/etc/config $(DESTDIR)/lib/upgrade/keep.d
	install -m 0755 dist/openwrt/r2d.init $(DESTDIR)/etc/init.d/r2d
	[ -e $(DESTDIR)/etc/config/r2 ] || install -m 0644 dist/openwrt/r2.config $(DESTDIR)/etc/config/r2
	install -m 0644 dist/openwrt/r2.keep $(DESTDIR)/lib/upgrade/keep.d/r2

# Keeps /etc/config/r2 and the node's id, /etc/r2/id.
uninstall-openwrt:
	rm -f $(DESTDIR)/etc/init.d/r2d $(DESTDIR)/lib/upgrade/keep.d/r2

# A static binary for TARGET (default x86_64 musl): needs `rustup target add
# TARGET`; linked by rust-lld (.cargo/config.toml), with no C toolchain.
# It must stay within 1 MiB, stripped.
# x86_64's is a static PIE, whose start code applies its own relocations:
# 1,200 of them, 29 KB as Elf64_Rela, 0.4 KB packed as DT_RELR (-z
# pack-relative-relocs; at 8fe97ee 1,059,304 bytes without, 1,029,704
# with). musl's start code reads DT_RELR from musl 1.2.4; r2 needs 1.2.5
# anyway (pwritev2), which Rust ships from 1.86. aarch64's is not a PIE:
# the flag changes nothing there.
TARGET ?= $(MUSL)
STATIC_RUSTFLAGS = $(strip $(RUSTFLAGS) -C link-arg=-zpack-relative-relocs)
static:
	RUSTFLAGS="$(STATIC_RUSTFLAGS)" $(CARGO) build --release --target $(TARGET)
	@ls -l target/$(TARGET)/release/r2
	@size=$$(stat -c %s target/$(TARGET)/release/r2); [ "$$size" -le 1048576 ] || \
		{ echo "target/$(TARGET)/release/r2 is $$size bytes, more than 1 MiB" >&2; exit 1; }

# The integration tests' core (tests/cross.rs) in a mixed network: daemons
# of CROSS's static binary, run under qemu-user, beside this machine's.
# Needs `rustup target add $(CROSS)` and qemu-user-static.
CROSS ?= aarch64-unknown-linux-musl
CROSS_RUNNER ?= qemu-$(firstword $(subst -, ,$(CROSS)))-static
cross-test:
	RUSTFLAGS="$(STATIC_RUSTFLAGS)" $(CARGO) build --release --target $(CROSS)
	R2_CROSS_BIN=$(CURDIR)/target/$(CROSS)/release/r2 R2_CROSS_RUNNER=$(CROSS_RUNNER) \
		$(CARGO) test --release --test cross -- --ignored

test:
	$(CARGO) test --release

# The long tests: 10,000 link and tunnel cycles, 1,000 concurrent tunnels,
# 1 GiB into a stopped consumer beside 100 live tunnels, a kept link whose
# far side is down for a minute.
stress:
	$(CARGO) test --release --test faults --test tunnels --test flow --test transports --test kept -- --ignored --test-threads=1

# Each r2 path beside the path a user would build instead, with as many
# processes and the same transport settings (pipes, socat, ssh, socat TUN);
# prints a table and writes target/bench.txt. See benches/bench.rs.
bench: release
	-RUSTFLAGS="$(STATIC_RUSTFLAGS)" $(CARGO) build --release --target $(MUSL) 2>/dev/null
	$(CARGO) bench --bench bench

fmt:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets --release -- -D warnings

manlint:
	mandoc -Tlint -Wwarning man/r2.1 man/r2d.8 man/r2.7

check: fmt clippy test manlint

demo: release
	sh tests/demo.sh $(RELEASE)/r2

clean:
	$(CARGO) clean

# Fuzzing (not in CI): each target for FUZZ_TIME seconds. Needs a nightly
# toolchain and `cargo install cargo-fuzz`. The corpus and any crash found
# are replayed on stable by tests/fuzz_corpus.rs.
FUZZ_TIME ?= 60
fuzz:
	cd fuzz && for t in frames framing robust reliable router hosts handshake tunnel_handshake; do \
		env -u RUSTFLAGS cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_TIME) || exit 1; \
	done
