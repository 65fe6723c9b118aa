# make rpm [TARGET=fedora|el10|el9|el8]  tproxy-firewalld's RPM and SRPM for that distribution,
#                                         into dist/TARGET/ (default TARGET: fedora)
# make rpm-all      all four targets
# make rpm-example  the example data-plane package (rpm/examples/), into dist/
#
# On this Debian machine: Debian's rpm package provides rpmbuild. rpm/build.py builds each
# target with its own Python stack (a pyenv Python with that distribution's library versions,
# build/stacks/), the spec's bundled libraries fetched from PyPI into SOURCES, and
# rpm/debian.macros standing in for the Fedora macros Debian's rpm lacks, with the target's
# %fedora/%rhel/%dist (rpm/targets.toml); the spec itself is Fedora's.
# --nodeps: the BuildRequires (python3-devel, ..., tproxy-firewalld for the example) are
# Fedora packages that Debian's empty rpm database cannot know about.

NAME    := tproxy-firewalld
TARGET  ?= fedora
TARGETS := fedora el10 el9 el8
# The interpreter that runs rpm/build.py (stdlib only) and builds the example.
HOSTPY  ?= python3
DISTDIR ?= dist
RPM_BUILDDIR ?= build/rpm
# PYTHON=...: build with this interpreter instead of the target's stack (it must have pip and
# the CLI's dependencies for the man page).
PYTHON  ?=

# --load before --define: a --define given earlier would be overridden by the file.
rpmbuild = rpmbuild --nodeps --load rpm/debian.macros \
	--define "_topdir $(abspath $(RPM_BUILDDIR))/$(1)"

# rpm/ is a directory: without .PHONY, `make rpm` would find it up to date.
.PHONY: rpm rpm-all rpm-example rpm-clean

rpm:
	$(HOSTPY) rpm/build.py rpm $(TARGET) --dist $(DISTDIR)/$(TARGET) --builddir $(RPM_BUILDDIR) \
		$(if $(PYTHON),--python $(PYTHON))

rpm-all:
	for target in $(TARGETS); do $(MAKE) rpm TARGET=$$target || exit 1; done

rpm-example:
	@command -v rpmbuild >/dev/null || { echo "rpmbuild not found (apt-get install rpm)" >&2; exit 1; }
	rm -rf $(RPM_BUILDDIR)/example
	mkdir -p $(DISTDIR)
	$(call rpmbuild,example) --load rpm/macros.$(NAME) -bb rpm/examples/kuma-dp-example.spec
	cp $(RPM_BUILDDIR)/example/RPMS/noarch/*.rpm $(DISTDIR)/

rpm-clean:
	rm -rf $(RPM_BUILDDIR)
