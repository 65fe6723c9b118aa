# make rpm          tproxy-firewalld's RPM and SRPM, into dist/
# make rpm-example  the example data-plane package (rpm/examples/), into dist/
#
# On this Debian machine: Debian's rpm package provides rpmbuild. rpm/debian.macros stands in
# for the Fedora macros Debian's rpm lacks (see that file); the spec itself is Fedora's.
# --nodeps: the BuildRequires (python3-devel, ..., tproxy-firewalld for the example) are
# Fedora packages that Debian's empty rpm database cannot know about.

NAME    := tproxy-firewalld
VERSION := $(shell sed -n 's/^Version:[[:space:]]*//p' rpm/$(NAME).spec)
# The interpreter that builds the wheel and runs the CLI's help for the man page: it needs pip
# and the CLI's dependencies (the project's .venv if there is one).
PYTHON  ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
DISTDIR ?= dist
RPM_BUILDDIR ?= build/rpm

python_abs = $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
# --load before --define: a --define given earlier would be overridden by the file.
rpmbuild = rpmbuild --nodeps --load rpm/debian.macros \
	--define "_topdir $(abspath $(RPM_BUILDDIR))/$(1)" --define "__python3 $(python_abs)"

# rpm/ is a directory: without .PHONY, `make rpm` would find it up to date.
.PHONY: rpm rpm-example rpm-clean

rpm:
	@command -v rpmbuild >/dev/null || { echo "rpmbuild not found (apt-get install rpm)" >&2; exit 1; }
	rm -rf $(RPM_BUILDDIR)/$(NAME)
	mkdir -p $(RPM_BUILDDIR)/$(NAME)/SOURCES $(DISTDIR)
	$(PYTHON) rpm/source-tarball.py $(NAME)-$(VERSION) $(RPM_BUILDDIR)/$(NAME)/SOURCES/$(NAME)-$(VERSION).tar.gz
	cp rpm/macros.$(NAME) $(RPM_BUILDDIR)/$(NAME)/SOURCES/
	$(call rpmbuild,$(NAME)) -ba rpm/$(NAME).spec
	cp $(RPM_BUILDDIR)/$(NAME)/RPMS/noarch/*.rpm $(RPM_BUILDDIR)/$(NAME)/SRPMS/*.rpm $(DISTDIR)/

rpm-example:
	@command -v rpmbuild >/dev/null || { echo "rpmbuild not found (apt-get install rpm)" >&2; exit 1; }
	rm -rf $(RPM_BUILDDIR)/example
	mkdir -p $(DISTDIR)
	$(call rpmbuild,example) --load rpm/macros.$(NAME) -bb rpm/examples/kuma-dp-example.spec
	cp $(RPM_BUILDDIR)/example/RPMS/noarch/*.rpm $(DISTDIR)/

rpm-clean:
	rm -rf $(RPM_BUILDDIR)
