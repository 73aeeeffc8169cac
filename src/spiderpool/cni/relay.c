/*
 * spiderpool's CNI relay: the executable the runtime runs for every pod, for the plugins
 * spiderpool, veth and coordinator (its name says which).
 *
 * It does no CNI work of its own. It sends the call (the CNI_* variables as headers, stdin as the
 * body) to spiderpool-agent's unix socket, where the Python plugin (spiderpool.cni) runs it, and
 * prints what the agent answers with the exit code it names. Linked statically, it needs no libc
 * on the node, and it starts in about a millisecond where a Python executable takes 20 to 60
 * (docs/design.md has the numbers).
 *
 * Where it looks for the agent, as the Python plugin does: the config's
 * "ipam_unix_socket_path", else <its own folder>/.spiderpool/socket, else upstream's default.
 * VERSION is answered here; an unreachable agent is CNI error 11 (try again later), or 50 for
 * STATUS (not available); a CNI_*
 * variable that is not printable ASCII is error 4 (it could not be sent as a header).
 *
 * Built by spiderpool.cni.relay (cc -static -Os).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/var/run/spidernet/spiderpool.sock"
#define SOCKET_FILE "/.spiderpool/socket"
#define MAX_INPUT (16 << 20)
#define TIMEOUT_S 100

static const char *const VARS[][2] = {
    {"CNI_COMMAND", "X-Cni-Command"}, {"CNI_CONTAINERID", "X-Cni-Containerid"},
    {"CNI_NETNS", "X-Cni-Netns"},     {"CNI_IFNAME", "X-Cni-Ifname"},
    {"CNI_ARGS", "X-Cni-Args"},       {"CNI_PATH", "X-Cni-Path"},
};

static char version[32] = "1.1.0";

struct buf {
    char *data;
    size_t len, cap;
};

static int put(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap) cap *= 2;
        char *data = realloc(b->data, cap);
        if (!data) return -1;
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

static int puts_(struct buf *b, const char *s) { return put(b, s, strlen(s)); }

/* A JSON string literal of s (the error messages this relay writes itself). */
static void json_string(FILE *out, const char *s) {
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static int fail(int code, const char *msg, const char *details) {
    printf("{\"cniVersion\": ");
    json_string(stdout, version);
    printf(", \"code\": %d, \"msg\": ", code);
    json_string(stdout, msg);
    if (details && *details) {
        printf(", \"details\": ");
        json_string(stdout, details);
    }
    printf("}");
    return 1;
}

/* The string value of the first "key": "value" in the config, when it is plain (no escapes);
 * enough for the two keys the relay reads itself, the agent parses the config properly. */
static int json_key(const char *text, const char *key, char *out, size_t size) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *p = strstr(text, quoted);
    if (!p) return 0;
    p += strlen(quoted);
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    if (*p++ != ':') return 0;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    if (*p++ != '"') return 0;
    size_t n = 0;
    while (p[n] && p[n] != '"' && p[n] != '\\') n++;
    if (p[n] != '"' || n == 0 || n >= size) return 0;
    memcpy(out, p, n);
    out[n] = 0;
    return 1;
}

/* Whether s can be an HTTP header's value as it is: printable ASCII and tabs. The runtime's CNI_*
 * values always are; anything else is refused here, naming the variable, rather than sent. */
static int header_safe(const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t') || c >= 0x7f) return 0;
    }
    return 1;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static void socket_path(const char *argv0, const char *config, char *out, size_t size) {
    if (json_key(config, "ipam_unix_socket_path", out, size)) return;
    const char *slash = strrchr(argv0, '/');
    size_t dir = slash ? (size_t)(slash - argv0) : 1;
    char file[4096];
    snprintf(file, sizeof file, "%.*s%s", (int)dir, slash ? argv0 : ".", SOCKET_FILE);
    FILE *f = fopen(file, "r");
    if (f) {
        size_t n = fread(out, 1, size - 1, f);
        fclose(f);
        while (n && (out[n - 1] == '\n' || out[n - 1] == ' ' || out[n - 1] == '\r')) n--;
        out[n] = 0;
        if (n) return;
    }
    snprintf(out, size, "%s", DEFAULT_SOCKET);
}

/* Connect, waiting while the agent's listen queue is full (EAGAIN on a unix socket). */
static int dial(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(addr.sun_path, path);
    struct timespec pause = {0, 5000000};
    time_t deadline = time(NULL) + TIMEOUT_S;
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        struct timeval tv = {TIMEOUT_S, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
        int err = errno;
        close(fd);
        if (err != EAGAIN || time(NULL) > deadline) {
            errno = err;
            return -1;
        }
        nanosleep(&pause, NULL);
        if (pause.tv_nsec < 200000000) pause.tv_nsec *= 2;
    }
}

static int send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The value of a reply header (case-insensitive name), or NULL. */
static const char *header(const char *head, const char *name, size_t *len) {
    size_t n = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            while (*v == ' ') v++;
            const char *end = strstr(v, "\r\n");
            *len = end ? (size_t)(end - v) : strlen(v);
            return v;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    (void)argc;
    const char *command = getenv("CNI_COMMAND");
    if (command && strcmp(command, "VERSION") == 0) {
        printf("{\"cniVersion\": \"1.1.0\", \"supportedVersions\": "
               "[\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]}");
        return 0;
    }
    struct buf in = {0};
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail(6, "cannot read the network config on stdin", strerror(errno));
        if (n == 0) break;
        if (in.len + (size_t)n > MAX_INPUT) return fail(6, "the network config on stdin is over 16 MiB", "");
        if (put(&in, chunk, (size_t)n)) return fail(100, "out of memory", "");
    }
    if (!in.data && put(&in, "", 0)) return fail(100, "out of memory", "");
    char found[sizeof version];
    if (json_key(in.data, "cniVersion", found, sizeof found)) strcpy(version, found);

    struct buf req = {0};
    char line[8192];
    snprintf(line, sizeof line,
             "POST /v1/cni/exec HTTP/1.1\r\nHost: spiderpool-agent\r\nConnection: close\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\nX-Cni-Plugin: %s\r\n",
             in.len, base_name(argv[0]));
    if (!header_safe(base_name(argv[0])))
        return fail(4, "the executable's name holds a character that is not printable ASCII", "");
    puts_(&req, line);
    for (size_t i = 0; i < sizeof VARS / sizeof VARS[0]; i++) {
        const char *value = getenv(VARS[i][0]);
        if (!value) continue;
        if (!header_safe(value)) {
            snprintf(line, sizeof line, "environment variable %s holds a character that is not printable ASCII",
                     VARS[i][0]);
            return fail(4, line, "");
        }
        if (puts_(&req, VARS[i][1]) || puts_(&req, ": ") || puts_(&req, value) || puts_(&req, "\r\n"))
            return fail(100, "out of memory", "");
    }
    if (puts_(&req, "\r\n") || put(&req, in.data, in.len)) return fail(100, "out of memory", "");

    char sock[4096];
    socket_path(argv[0], in.data, sock, sizeof sock);
    int fd = dial(sock);
    struct buf reply = {0};
    if (fd >= 0 && send_all(fd, req.data, req.len) == 0) {
        for (;;) {
            ssize_t n = recv(fd, chunk, sizeof chunk, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            if (put(&reply, chunk, (size_t)n)) return fail(100, "out of memory", "");
        }
    }
    if (fd < 0 || !reply.data) {
        int status_call = command && strcmp(command, "STATUS") == 0;
        snprintf(line, sizeof line, "%sspiderpool-agent is not reachable at %s: %s",
                 status_call ? "spiderpool IPAM is not available: " : "", sock, strerror(errno ? errno : ECONNRESET));
        /* (STATUS answers 50, "not available", as the spec words it; any other call 11, try again) */
        return fail(status_call ? 50 : 11, line, "is spiderpool-agent running?");
    }
    close(fd);
    char *body = strstr(reply.data, "\r\n\r\n");
    int status = 0;
    if (!body || sscanf(reply.data, "HTTP/1.%*d %d", &status) != 1)
        return fail(11, "spiderpool-agent sent a malformed reply", "");
    *body = 0;
    body += 4;
    size_t vlen = 0;
    const char *code = header(reply.data, "X-Cni-Exit", &vlen);
    if (status != 200 || !code) {
        snprintf(line, sizeof line, "spiderpool-agent cannot run relayed calls (HTTP %d): %.300s", status, body);
        return fail(11, line, "is spiderpool-agent as new as this plugin?");
    }
    size_t blen = reply.len - (size_t)(body - reply.data);
    if (fwrite(body, 1, blen, stdout) != blen) return 1;
    return atoi(code);
}
