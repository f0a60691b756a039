# qpsmtpd for Python — set-up, run, test.
#   make run    the daemon on 127.0.0.1:2525 with ./config, mail into ./maildir
#   make test   the test suite (installs what it needs first)
#   make fuzz   coverage-guided fuzzing, FUZZ_TIME seconds per target

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
HOST    ?= 127.0.0.1
PORT    ?= 2525
FUZZ_TIME ?= 60
FUZZ_STAMP := $(VENV)/.fuzz-installed
# Debian packages the tests drive for real: tcpserver (ucspi-tcp),
# supervise/multilog (daemontools), fortune (quit_fortune), redis-server
# (shared state), spamd, clamd, swaks and openssl (TLS/AUTH clients),
# opendkim-testmsg and Mail::DKIM (independent DKIM verifiers), p0f,
# slapd (LDAP AUTH).
DEBS    := ucspi-tcp daemontools fortune-mod redis-server spamd spamassassin \
           clamav-daemon clamdscan clamav swaks opendkim-tools \
           libmail-dkim-perl libnet-dns-perl p0f openssl slapd ldap-utils
DEB_BINS := /usr/bin/tcpserver /usr/bin/multilog /usr/games/fortune \
           /usr/bin/redis-server /usr/sbin/spamd /usr/sbin/clamd /usr/bin/clamdscan /usr/bin/swaks \
           /usr/sbin/opendkim-testmsg /usr/sbin/p0f /usr/bin/openssl /usr/sbin/slapd

.PHONY: run test debs clean hooks tls-cert fuzz bench bench-profile

# editable_mode=compat: the tree as a plain sys.path entry, without the
# import finder that a default editable install runs at every Python start
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]' \
		--config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	mkdir -p maildir
	exec $(VENV)/bin/qpsmtpd-forkserver --listen-address $(HOST) --port $(PORT) --config-dir ./config

# Install missing Debian packages when running as root; otherwise the tests
# that need them skip with a reason.
debs:
	@missing=""; for b in $(DEB_BINS); do [ -x $$b ] || missing=1; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(DEBS)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  (apt-get install -y -q --no-install-recommends $(DEBS) >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && \
	    apt-get install -y -q --no-install-recommends $(DEBS) >/dev/null)); \
	fi

test: $(STAMP) debs
	$(PY) -m pytest -q

# A private CA and a server certificate for the sample config (tls plugin);
# config/ssl is where the tls plugin looks with --config-dir ./config.
tls-cert:
	$(PYTHON) plugins/tls_cert --dir config/ssl --alt-name $(HOST)

$(FUZZ_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,fuzz]'
	touch $(FUZZ_STAMP)

# atheris on the parsers, the session and the DATA reader; fails on any crash.
fuzz: $(FUZZ_STAMP)
	$(PY) fuzz/run.py --time $(FUZZ_TIME)

# Benchmark (bench/, docs/PERFORMANCE.md): our daemon against Debian's
# qpsmtpd 0.94 and Postfix's smtp-sink. As root it first installs postfix,
# qpsmtpd and ucspi-tcp (their own services stay off). Not part of test/CI.
bench: $(STAMP)
	sh bench/install.sh
	$(PY) bench/run.py $(BENCH_ARGS)

# Where the time goes: cProfile and py-spy under load -> bench/results/profile/
bench-profile: $(STAMP)
	sh bench/install.sh
	$(PY) -m pip install --quiet --disable-pip-version-check py-spy
	$(PY) bench/profile_daemon.py $(BENCH_ARGS)

hooks: $(STAMP)
	$(VENV)/bin/qpsmtpd --config-dir ./config --hooks

clean:
	rm -rf $(VENV) maildir tmp *.egg-info .pytest_cache .hypothesis
