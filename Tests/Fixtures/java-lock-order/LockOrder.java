import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Two threads take two monitors in opposite order, and the control channel then waits on one.
 *
 * Answers defib's ping protocol on $DEFIB_CONTROL_SOCKET ("ping TOKEN" -> "pong TOKEN", one line per
 * connection) after reading shared state inside {@code synchronized (accounts)}, the way a real control
 * channel checks the path that must make progress. After HANG_AFTER pings (default 5) the threads
 * "payments" (accounts, then journal) and "reconciler" (journal, then accounts) start. With HANG_ONCE=PATH
 * only the instance that creates PATH hangs (its replacements keep answering).
 */
public final class LockOrder {
    static final Object accounts = new Object();
    static final Object journal = new Object();
    static final Object start = new Object();
    static boolean started;
    static long balance;

    static void awaitStart() throws InterruptedException {
        synchronized (start) {
            while (!started) start.wait();
        }
    }

    static void pay() throws InterruptedException {
        awaitStart();
        synchronized (accounts) {
            Thread.sleep(100);
            synchronized (journal) { balance++; }
        }
    }

    static void reconcile() throws InterruptedException {
        awaitStart();
        synchronized (journal) {
            Thread.sleep(100);
            synchronized (accounts) { balance--; }
        }
    }

    static boolean shouldHang() {
        String once = System.getenv("HANG_ONCE");
        if (once == null) return true;
        try {
            Files.createFile(Path.of(once));
            return true;
        } catch (java.io.IOException e) {
            return false;
        }
    }

    static void answerPing(SocketChannel c, int pings, int hangAfter) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(Channels.newInputStream(c), StandardCharsets.UTF_8));
        String line = in.readLine();
        if (line == null) return;
        if (pings == hangAfter && shouldHang()) {
            synchronized (start) { started = true; start.notifyAll(); }
        }
        long seen;
        synchronized (accounts) { seen = balance; }
        OutputStream out = Channels.newOutputStream(c);
        out.write(("pong" + line.substring(4) + "\n").getBytes(StandardCharsets.UTF_8));
        out.flush();
    }

    public static void main(String[] args) throws Exception {
        String path = System.getenv("DEFIB_CONTROL_SOCKET");
        int hangAfter = Integer.parseInt(System.getenv().getOrDefault("HANG_AFTER", "5"));
        Thread payments = new Thread(() -> { try { pay(); } catch (InterruptedException e) { } }, "payments");
        Thread reconciler = new Thread(() -> { try { reconcile(); } catch (InterruptedException e) { } }, "reconciler");
        payments.setDaemon(true); reconciler.setDaemon(true);
        payments.start(); reconciler.start();
        Files.deleteIfExists(Path.of(path));
        ServerSocketChannel server = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        server.bind(UnixDomainSocketAddress.of(path));
        System.err.println("java-lock-order pid=" + ProcessHandle.current().pid());
        int pings = 0;
        while (true) {
            try (SocketChannel c = server.accept()) {
                pings++;
                answerPing(c, pings, hangAfter);
            } catch (java.io.IOException e) {
                // the supervisor gave up on this ping
            }
        }
    }
}
