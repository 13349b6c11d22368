"""Numeric loops with few calls: a small gravitational n-body integration.

Five bodies, all arithmetic inline in two functions with nested loops over
lists of floats: almost no calls, so a per-call cost should not show here.
SIZE is the number of time steps.
"""

from _harness import main


def make_system():
    # name: position (x, y, z), velocity, mass; arbitrary but stable values.
    bodies = []
    for k in range(5):
        position = [1.5 * k - 3.0, 0.4 * k * k - 1.0, 0.25 * (k % 3)]
        velocity = [0.01 * (3 - k), 0.02 * (k % 2), -0.005 * k]
        mass = 1.0 if k == 0 else 0.001 * (k + 1)
        bodies.append((position, velocity, mass))
    return bodies


def advance(bodies, dt, steps):
    n = len(bodies)
    for _ in range(steps):
        for i in range(n):
            (xi, yi, zi), vi, mi = bodies[i]
            for j in range(i + 1, n):
                (xj, yj, zj), vj, mj = bodies[j]
                dx = xi - xj
                dy = yi - yj
                dz = zi - zj
                d2 = dx * dx + dy * dy + dz * dz + 0.01
                mag = dt / (d2 * d2 ** 0.5)
                bm = mj * mag
                vi[0] -= dx * bm
                vi[1] -= dy * bm
                vi[2] -= dz * bm
                bm = mi * mag
                vj[0] += dx * bm
                vj[1] += dy * bm
                vj[2] += dz * bm
        for position, velocity, _ in bodies:
            position[0] += dt * velocity[0]
            position[1] += dt * velocity[1]
            position[2] += dt * velocity[2]


def energy(bodies):
    e = 0.0
    for i, (p, v, m) in enumerate(bodies):
        e += 0.5 * m * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
        for q, _, mq in bodies[i + 1:]:
            d = ((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2
                 + (p[2] - q[2]) ** 2 + 0.01) ** 0.5
            e -= m * mq / d
    return e


def workload(steps):
    bodies = make_system()
    advance(bodies, 0.01, steps)
    return "%.6f" % energy(bodies)


if __name__ == "__main__":
    main(workload, 48000)
