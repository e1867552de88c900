# LLMSafeSpace: top-level build, run and test.
SHELL := /bin/bash
#
#   make          build the nginx module (and the runner)
#   make run      start the local stack
#   make test     run every test
#   make install  install the module into Debian's nginx

TOP        := $(CURDIR)
BUILD      := $(TOP)/build
NGX_SRC    ?= /usr/share/nginx/src
NGX_BUILD  := $(BUILD)/nginx
MODULE     := $(BUILD)/ngx_http_llmsafespace_module.so
MODULE_SRC := $(wildcard ngx_llmsafespace/*.c ngx_llmsafespace/*.h) config \
              $(wildcard controller/contract/*.h)
NGX_MODDIR ?= /usr/lib/nginx/modules
PROVE      ?= prove
PYTHON     ?= /usr/bin/python3

export TOP BUILD MODULE

.PHONY: all module runner deps install uninstall test test-unit test-gateway \
        test-gateway-valgrind test-runner test-runtimes test-controller \
        bench run stop admin-key clean controller rootfs-python stack \
        test-e2e test-sdk test-security cluster-harness test-cluster fuzz

all: module runner

deps:
	@tools/deps.sh

# The module is built in a private copy of Debian's nginx-dev tree, configured
# with Debian's own flags (--with-compat), so it loads into the stock binary.
# nginx's configure lists the module's files: a new or removed file means
# configuring again.
SRC_LIST   := $(BUILD)/module-sources
$(shell mkdir -p $(BUILD); ls ngx_llmsafespace/*.[ch] 2>/dev/null > $(SRC_LIST).new; \
    cmp -s $(SRC_LIST).new $(SRC_LIST) || mv $(SRC_LIST).new $(SRC_LIST))

$(NGX_BUILD)/Makefile: config $(SRC_LIST)
	@tools/deps.sh gateway.txt
	rm -rf $(NGX_BUILD) && mkdir -p $(BUILD)
	cp -r $(NGX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && . ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" \
	        --add-dynamic-module=$(TOP) > configure.log 2>&1 \
	    || { tail -30 configure.log; exit 1; }

$(MODULE): $(NGX_BUILD)/Makefile $(MODULE_SRC)
	$(MAKE) -C $(NGX_BUILD) -f objs/Makefile modules
	@# a new inode: a running nginx keeps the old mapping intact
	cp $(NGX_BUILD)/objs/ngx_http_llmsafespace_module.so $@.tmp && mv -f $@.tmp $@

module: $(MODULE)

runner:
	@tools/deps.sh
	$(MAKE) -C runtimes/runner

install: $(MODULE)
	install -D -m 0644 $(MODULE) $(NGX_MODDIR)/ngx_http_llmsafespace_module.so
	install -D -m 0644 conf/mod-http-llmsafespace.conf \
	    /usr/share/nginx/modules-available/mod-http-llmsafespace.conf
	ln -sf /usr/share/nginx/modules-available/mod-http-llmsafespace.conf \
	    /etc/nginx/modules-enabled/50-mod-http-llmsafespace.conf
	install -D -m 0644 conf/llmsafespace-runner.conf \
	    /etc/nginx/llmsafespace/runner.conf
	install -D -m 0644 conf/profiles.json /etc/nginx/llmsafespace/profiles.json
	install -D -m 0644 runtimes/index.json \
	    /usr/share/llmsafespace/runtimes/index.json
	install -D -m 0644 -t /usr/share/llmsafespace/contract \
	    controller/contract/*.lua

uninstall:
	rm -f $(NGX_MODDIR)/ngx_http_llmsafespace_module.so \
	    /usr/share/nginx/modules-available/mod-http-llmsafespace.conf \
	    /etc/nginx/modules-enabled/50-mod-http-llmsafespace.conf \
	    /etc/nginx/llmsafespace/runner.conf \
	    /etc/nginx/llmsafespace/profiles.json
	rm -rf /usr/share/llmsafespace

test: deps module test-unit test-gateway test-runner test-runtimes \
      test-controller test-cluster test-e2e test-sdk test-security

# checks that need no server: seccomp profiles, descriptors, CRDs, bundles
test-unit:
	$(MAKE) -C runtimes test-static

test-gateway: $(MODULE)
	$(PROVE) -I t/lib t/

# The same integration tests with every nginx process under valgrind
# memcheck; any error report fails the run.
test-gateway-valgrind: $(MODULE)
	LSS_TEST_VALGRIND=1 $(PROVE) -I t/lib t/

test-runner:
	$(MAKE) -C runtimes/runner test

test-runtimes:
	$(MAKE) -C runtimes test

# the Kubernetes client's tests run against the control plane of
# t/cluster: here its absence is a failure, not a skip
test-controller: cluster-harness
	LSS_REQUIRE_CLUSTER=1 $(MAKE) -C controller test

# A real Kubernetes control plane for the cluster-mode tests (t/cluster):
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler in one
# Go program built from the Kubernetes release modules. Go's own module
# and build caches make a rebuild cheap; make relinks only when
# t/cluster's sources change.
GO          ?= $(firstword $(wildcard /usr/local/go/bin/go) go)
CLUSTER     := $(BUILD)/cluster/lss-cluster
CLUSTER_SRC := $(wildcard t/cluster/*.go) t/cluster/go.mod t/cluster/go.sum
K8S_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" {print $$2}' t/cluster/go.mod)
K8S_MINOR   := $(word 2,$(subst ., ,$(K8S_VERSION)))
# the release's version, as kube-apiserver's /version and kubectl show it
GOBUILD     := GOTOOLCHAIN=local $(GO) build -trimpath -ldflags='-s -w \
    -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=$(K8S_MINOR)'

$(CLUSTER): $(CLUSTER_SRC)
	cd t/cluster && $(GOBUILD) -o $@ .

# the fault proxy between a client and that API server (standard library only)
FAULTPROXY  := $(BUILD)/cluster/lss-faultproxy
$(FAULTPROXY): $(wildcard t/cluster/faultproxy/*.go) t/cluster/go.mod
	cd t/cluster && $(GOBUILD) -o $@ ./faultproxy

# kubectl: the machine's, else one of the same release built here (a
# tool of t/cluster/go.mod); KUBECTL= chooses another
KUBECTL     ?= $(or $(shell command -v kubectl),$(BUILD)/cluster/kubectl)
export KUBECTL
$(BUILD)/cluster/kubectl: t/cluster/go.mod t/cluster/go.sum
	cd t/cluster && $(GOBUILD) -o $@ k8s.io/kubernetes/cmd/kubectl

cluster-harness: $(CLUSTER) $(FAULTPROXY) $(KUBECTL)

# the custom resources, kube-controller-manager's work and the fault
# proxy on that control plane, through kubectl (t/cluster/tests)
test-cluster: cluster-harness
	@tools/deps.sh cluster.txt
	$(PYTHON) -m pytest -q t/cluster/tests

# the sandbox API on the whole stack: nginx, Redis, PostgreSQL, the
# controller and runc/runsc sandboxes (root; builds what it runs)
test-e2e: $(MODULE) controller rootfs-python
	prove -I t/lib t/e2e/

# the Python SDK against a local stack of its own (sdk/python/tests)
test-sdk: stack
	$(MAKE) -C sdk/python test-sdk

# the adversarial matrix of ../shared/design/security.md through the
# public API, every case under runc and runsc, on a stack of its own; the
# table case x runtime ends the output (and build/security/matrix.md)
test-security: stack
	$(PYTHON) -m pytest -q -p no:cacheprovider t/security

# the fuzzers for long (FUZZ_SECONDS each, default 600); make test runs
# each for 30 s
FUZZ_SECONDS ?= 600
fuzz:
	$(MAKE) -C controller fuzz-watch FUZZ_SECONDS=$(FUZZ_SECONDS)

bench: $(MODULE)
	bench/run.sh

controller:
	$(MAKE) -C controller

# the default warm pool's root filesystem (cached; `make -C runtimes
# rootfs` builds every runtime's)
rootfs-python:
	$(MAKE) -C runtimes rootfs-python

# everything the local stack runs
stack: deps $(MODULE) controller rootfs-python

# the local stack under run/ (LSS_RUN, LSS_PORT, LSS_DETACH=1); tools/run.sh
# builds through `make stack` first; `make stop` ends it
run:
	tools/run.sh

stop:
	tools/run.sh stop

# a new admin key on the running local stack's database
LSS_RUN    ?= $(TOP)/run
admin-key:
	tools/llmsafespace-admin init --db "host=$(LSS_RUN)/pg user=postgres dbname=llmsafespace" --force-new-key

clean:
	rm -rf $(BUILD)
