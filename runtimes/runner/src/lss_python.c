/*
 * The Python zygote's interpreter: initialised once (isolated mode, UTF-8,
 * unbuffered stdio so output streams as it is written), preload packages
 * imported and preload scripts run in __main__, then only ever used by
 * forked workers.  A stateless worker runs one execution and exits; a
 * context worker keeps its __main__ between executions.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "lss_zygote.h"
#include "lss_proto.h"
#include "lss_fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>


static PyObject  *lss_py_helpers;

/* helpers kept in Python: they only touch Python-level state */
static const char  lss_py_helpers_src[] =
    "import io, os, sys\n"
    "def prepare(env, pypath):\n"
    "    os.environ.clear()\n"
    "    os.environ.update(env)\n"
    "    sys.argv = ['-c']\n"
    "    if pypath and pypath not in sys.path:\n"
    "        sys.path.insert(0, pypath)\n"
    "    if '' not in sys.path:\n"
    "        sys.path.insert(0, '')\n"
    "def rebind():\n"
    "    sys.stdin = io.TextIOWrapper(io.FileIO(0, 'r', closefd=False),\n"
    "                                 encoding='utf-8', errors='replace')\n"
    "def warm(env, pypath):\n"
    "    path = sys.path[:]\n"
    "    prepare(env, pypath)\n"
    "    sys.path[:] = path\n"
    "    os.environ.clear()\n"
    "    print(1, file=io.StringIO())\n"
    "def flush():\n"
    "    for s in (sys.stdout, sys.stderr):\n"
    "        try:\n"
    "            s.flush()\n"
    "        except Exception:\n"
    "            pass\n";


static int lss_py_exec(const char *code, int in_context);
static int lss_py_prepare(json_t *req, const char *helper);


int
lss_py_init(const char *packages, char **scripts, int nscripts)
{
    int          i, rc;
    char        *list, *name, *save, *path, *code;
    FILE        *f;
    PyObject    *m, *mod, *dict;
    PyStatus     st;
    PyConfig     config;
    PyPreConfig  pre;

    PyPreConfig_InitIsolatedConfig(&pre);
    pre.utf8_mode = 1;
    st = Py_PreInitialize(&pre);
    if (PyStatus_Exception(st)) {
        return -1;
    }

    PyConfig_InitIsolatedConfig(&config);
    config.buffered_stdio = 0;
    config.write_bytecode = 0;
    config.install_signal_handlers = 0;
    config.site_import = 1;

    st = PyConfig_SetBytesString(&config, &config.program_name,
                                 "python3");
    if (!PyStatus_Exception(st)) {
        st = Py_InitializeFromConfig(&config);
    }
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) {
        return -1;
    }

    mod = PyModule_New("_lss");
    if (mod == NULL) {
        return -1;
    }
    dict = PyModule_GetDict(mod);
    PyDict_SetItemString(dict, "__builtins__", PyEval_GetBuiltins());
    m = PyRun_String(lss_py_helpers_src, Py_file_input, dict, dict);
    if (m == NULL) {
        PyErr_Print();
        return -1;
    }
    Py_DECREF(m);
    lss_py_helpers = mod;

    if (packages != NULL && packages[0] != '\0') {
        list = strdup(packages);
        if (list == NULL) {
            return -1;
        }
        for (name = strtok_r(list, ",", &save); name != NULL;
             name = strtok_r(NULL, ",", &save))
        {
            m = PyImport_ImportModule(name);
            if (m == NULL) {
                fprintf(stderr, "zygote: preload package %s failed\n", name);
                PyErr_Print();
                free(list);
                return -1;
            }
            /* visible to executions as if they had imported it */
            PyObject_SetAttrString(PyImport_AddModule("__main__"), name, m);
            Py_DECREF(m);
        }
        free(list);
    }

    for (i = 0; i < nscripts; i++) {
        path = strchr(scripts[i], '=');
        path = path ? path + 1 : scripts[i];

        f = fopen(path, "re");
        if (f == NULL) {
            fprintf(stderr, "zygote: preload script %s: %s\n", path,
                    strerror(errno));
            return -1;
        }
        code = lss_read_fd(fileno(f));
        fclose(f);
        if (code == NULL) {
            return -1;
        }

        rc = lss_py_exec(code, 1);
        free(code);
        if (rc != 0) {
            fprintf(stderr, "zygote: preload script %s failed\n", path);
            return -1;
        }
    }

    m = PyObject_CallMethod(lss_py_helpers, "flush", NULL);
    Py_XDECREF(m);
    fflush(NULL);

    /*
     * What every worker inherits: no garbage, and the collector never
     * walks (so never writes, so never copies) the zygote's objects:
     * CPython's advice for pre-fork servers.
     */
    m = PyRun_String("import gc\ngc.collect()\ngc.freeze()\n", Py_file_input,
                     PyModule_GetDict(lss_py_helpers),
                     PyModule_GetDict(lss_py_helpers));
    if (m == NULL) {
        PyErr_Print();
        return -1;
    }
    Py_DECREF(m);

    return 0;
}


/*
 * In the idle worker, right after the fork.  Besides the interpreter's
 * own after-fork work, run once what every execution runs first (parse
 * a request, set the environment, compile, print): a forked worker pays
 * a copy-on-write fault (about 3 us on these machines) for every page it
 * writes first, reference counts included, and these are paid now,
 * while idle, instead of on the execution's path.
 */
void
lss_py_after_fork(void)
{
    json_t    *j;
    PyObject  *m;

    PyOS_AfterFork_Child();

    j = json_loads("{\"uid\":1,\"gid\":1,\"cwd\":\"/\",\"env\":[\"PATH=/\","
                   "\"HOME=/\",\"LANG=C.UTF-8\"],\"limits\":{\"cpu\":31,"
                   "\"data\":1,\"nofile\":1,\"nproc\":1,\"fsize\":1},"
                   "\"pypath\":\"/\",\"python\":true,\"code\":\"print(1)\"}",
                   0, NULL);
    if (j != NULL) {
        /* prepare()'s own path; sys.path and os.environ are put back */
        (void) lss_py_prepare(j, "warm");
        json_decref(j);
    }

    m = Py_CompileString("print(1)\n", "<execution>", Py_file_input);
    Py_XDECREF(m);

    PyErr_Clear();
}


/* stateless worker: confine, run, exit */
void
lss_py_run(json_t *req, int *fds)
{
    int          rc;
    PyObject    *m;
    const char  *code;

    lss_confine(req, fds);

    if (lss_py_prepare(req, "prepare") != 0) {
        _exit(126);
    }

    code = json_string_value(json_object_get(req, "code"));
    rc = lss_py_exec(code ? code : "", 0);

    m = PyObject_CallMethod(lss_py_helpers, "flush", NULL);
    Py_XDECREF(m);

    _exit(rc);
}


/*
 * context worker: confine once, then run one execution per message
 * received on fd 3 (the context socket), each with its own stdio.
 */
void
lss_py_context(json_t *req, int *fds)
{
    int               i, nfd, rfds[4], devnull, rc;
    char             *code;
    json_t           *r;
    PyObject         *m;
    lss_ctx_reply_t   reply;

    lss_confine(req, fds);

    if (lss_py_prepare(req, "prepare") != 0) {
        _exit(126);
    }

    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

    for ( ;; ) {
        nfd = lss_fd_recv(3, rfds, 4);
        if (nfd <= 0) {
            _exit(0);
        }
        if (nfd != 4) {
            _exit(1);
        }

        code = lss_read_fd(rfds[0]);
        r = code ? json_loads(code, 0, NULL) : NULL;
        free(code);

        dup2(rfds[1], 0);
        dup2(rfds[2], 1);
        dup2(rfds[3], 2);
        for (i = 0; i < 4; i++) {
            close(rfds[i]);
        }

        m = PyObject_CallMethod(lss_py_helpers, "rebind", NULL);
        Py_XDECREF(m);

        rc = 1;
        if (r != NULL) {
            rc = lss_py_exec(json_string_value(json_object_get(r, "code")),
                             1);
            json_decref(r);
        }

        m = PyObject_CallMethod(lss_py_helpers, "flush", NULL);
        Py_XDECREF(m);

        /* the runner sees EOF on the pipes: this execution is over */
        dup2(devnull, 0);
        dup2(devnull, 1);
        dup2(devnull, 2);

        reply.code = rc;
        if (send(3, &reply, sizeof(reply), MSG_NOSIGNAL) < 0) {
            _exit(0);
        }
    }
}


/* call helper (prepare, or warm while idle) with the request's env */
static int
lss_py_prepare(json_t *req, const char *helper)
{
    size_t       i;
    char        *eq;
    json_t      *env, *v;
    PyObject    *d, *k, *val, *r;
    const char  *s, *pypath;

    d = PyDict_New();
    if (d == NULL) {
        return -1;
    }

    env = json_object_get(req, "env");
    json_array_foreach(env, i, v) {
        s = json_string_value(v);
        eq = s ? strchr(s, '=') : NULL;
        if (eq == NULL) {
            continue;
        }
        k = PyUnicode_DecodeFSDefaultAndSize(s, eq - s);
        val = PyUnicode_DecodeFSDefault(eq + 1);
        if (k != NULL && val != NULL) {
            PyDict_SetItem(d, k, val);
        }
        Py_XDECREF(k);
        Py_XDECREF(val);
    }

    pypath = json_string_value(json_object_get(req, "pypath"));

    r = PyObject_CallMethod(lss_py_helpers, helper, "Os", d,
                            pypath ? pypath : "");
    Py_DECREF(d);
    if (r == NULL) {
        PyErr_Print();
        return -1;
    }
    Py_DECREF(r);

    return 0;
}


/*
 * Run code in __main__.  In a context a SystemExit ends the execution,
 * not the context.  Returns the exit code.
 */
static int
lss_py_exec(const char *code, int in_context)
{
    int        rc;
    PyObject  *co, *res, *dict, *type, *value, *tb, *c;

    dict = PyModule_GetDict(PyImport_AddModule("__main__"));

    co = Py_CompileString(code ? code : "", "<execution>", Py_file_input);
    if (co == NULL) {
        PyErr_Print();
        return 1;
    }

    res = PyEval_EvalCode(co, dict, dict);
    Py_DECREF(co);
    if (res != NULL) {
        Py_DECREF(res);
        return 0;
    }

    if (!in_context || !PyErr_ExceptionMatches(PyExc_SystemExit)) {
        /* for a stateless worker this exits on SystemExit */
        PyErr_Print();
        return 1;
    }

    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    rc = 0;
    c = value ? PyObject_GetAttrString(value, "code") : NULL;
    if (c != NULL && PyLong_Check(c)) {
        rc = (int) PyLong_AsLong(c);
    } else if (c != NULL && c != Py_None) {
        rc = 1;
    }
    PyErr_Clear();
    Py_XDECREF(c);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);

    return rc;
}
