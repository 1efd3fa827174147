/*
 * The neon client's transport (neon.c over runtime/http.c) against real sockets of this
 * process: a server that accepts and never answers is left by a cancel (as SIGINT sets it) with
 * the cancel error and no retry; a refused port gives the retryable "cannot reach" error with
 * curl's own words; and one client reuses its connection across calls (keep-alive), seen by a
 * server that counts the connections it accepts.
 */
#include "harness.h"
#include "io/cancel.h"
#include "modules/neon/neon.h"
#include "secret.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_any(int *port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 8) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &al) != 0)
        return -1;
    *port = ntohs(a.sin_port);
    return s;
}

static NeonClient *client_for(int port, double timeout)
{
    char host[64];
    snprintf(host, sizeof host, "http://127.0.0.1:%d/api/v2", port);
    RtError err;
    rt_error_init(&err);
    static const char k[] = "neon-test-key-0123456789";
    RtSecret *key = rt_secret_from_value(k, sizeof k - 1, "test", &err);
    NeonOptions o = {.host = host, .key = key, .timeout = timeout, .retry_base = 0.05};
    NeonClient *c = key ? neon_client_new(&o, &err) : NULL;
    rt_secret_free(key);
    return c;
}

static void *cancel_soon(void *ud)
{
    (void)ud;
    usleep(300 * 1000);
    rt_cancel(RT_CLASS_CANCELLED); /* what the SIGINT handler does */
    return NULL;
}

static void test_cancel_stops_a_silent_server(void)
{
    int port, s = listen_any(&port); /* the kernel completes the handshake; nobody answers */
    CHECK(s >= 0);
    NeonClient *c = client_for(port, 600);
    CHECK(c != NULL);
    if (!c) return;
    pthread_t t;
    pthread_create(&t, NULL, cancel_soon, NULL);
    NeonResponse r;
    RtError err;
    rt_error_init(&err);
    int rc = neon_request(c, "GET", "/projects/p", NULL, "neon project p", 0, &r, &err);
    pthread_join(t, NULL);
    CHECK_EQ_INT(rc, RT_ERR);
    CHECK_EQ_INT(err.klass, RT_CLASS_CANCELLED);
    CHECK_EQ_INT(r.attempts, 1); /* no retry after the cancel */
    neon_response_free(&r);
    neon_client_free(c);
    rt_cancel_reset();
    close(s);
}

static void test_refused_is_cannot_reach(void)
{
    int port, s = listen_any(&port);
    close(s); /* nothing listens there now */
    NeonClient *c = client_for(port, 0.3);
    CHECK(c != NULL);
    if (!c) return;
    NeonResponse r;
    RtError err;
    rt_error_init(&err);
    CHECK_EQ_INT(neon_request(c, "GET", "/projects/p", NULL, "neon project p", 0, &r, &err),
                 RT_ERR);
    CHECK_EQ_STR(err.code, "neon.unavailable");
    CHECK(err.retryable);
    CHECK(strstr(err.message, "cannot reach http://127.0.0.1:") != NULL);
    CHECK(strstr(err.message, "neon-test-key") == NULL);
    CHECK(r.attempts >= 2); /* retried */
    neon_response_free(&r);
    neon_client_free(c);
}

typedef struct Server {
    int s, accepted, answered, want;
} Server;

/* Answers `want` requests, on whatever connections the client opens, counting them. */
static void *serve(void *ud)
{
    Server *sv = ud;
    while (sv->answered < sv->want) {
        int fd = accept(sv->s, NULL, NULL);
        if (fd < 0) break;
        sv->accepted++;
        char buf[4096];
        buf[0] = 0;
        for (;;) {
            size_t got = 0;
            while (!strstr(buf, "\r\n\r\n")) {
                ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
                if (n <= 0) break;
                got += (size_t)n;
                buf[got] = 0;
            }
            if (!got || !strstr(buf, "\r\n\r\n")) break;
            static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     "Content-Length: 11\r\n\r\n{\"ok\":true}";
            if (write(fd, ok, sizeof ok - 1) < 0) break;
            buf[0] = 0;
            if (++sv->answered == sv->want) break;
        }
        close(fd);
    }
    return NULL;
}

static void test_keep_alive(void)
{
    Server sv = {.want = 3};
    int port;
    sv.s = listen_any(&port);
    CHECK(sv.s >= 0);
    pthread_t t;
    pthread_create(&t, NULL, serve, &sv);
    NeonClient *c = client_for(port, 10);
    CHECK(c != NULL);
    for (int i = 0; c && i < 3; i++) {
        NeonResponse r;
        RtError err;
        rt_error_init(&err);
        CHECK_EQ_INT(neon_request(c, "GET", "/projects/p", NULL, NULL, 0, &r, &err), RT_OK);
        CHECK_EQ_INT(r.status, 200);
        CHECK_EQ_STR(r.body, "{\"ok\":true}");
        neon_response_free(&r);
    }
    shutdown(sv.s, SHUT_RDWR); /* a server still waiting (a failed call) stops */
    pthread_join(t, NULL);
    CHECK_EQ_INT(sv.answered, 3);
    CHECK_EQ_INT(sv.accepted, 1); /* three calls, one connection */
    neon_client_free(c);
    close(sv.s);
}

TEST_MAIN(test_cancel_stops_a_silent_server, test_refused_is_cannot_reach, test_keep_alive)
