import { describe, expect, it } from 'vitest';
import { DIFF_NEUTRAL_BELOW, diffColor, frameColor, hslToHex, packageColor, packageOf, relativeChange } from './colors';

const rgb = (text: string) => text.match(/\d+/g)!.map(Number);

describe('package colours', () => {
  it('extracts packages from Go, Rust/C++ and Python frames', () => {
    expect(packageOf({ function: 'crypto/sha256.block' })).toBe('crypto/sha256');
    expect(packageOf({ function: 'runtime.mallocgc' })).toBe('runtime');
    expect(packageOf({ function: 'main.(*server).handle' })).toBe('main');
    expect(packageOf({ function: 'github.com/acme/api/v2.(*T).Run' })).toBe('github.com/acme/api/v2');
    expect(packageOf({ function: 'tokio::runtime::park' })).toBe('tokio');
    expect(packageOf({ function: '<alloc::vec::Vec<T> as Drop>::drop' })).toBe('alloc');
    expect(packageOf({ function: 'compute (app/server.py:12)' })).toBe('app/server.py');
    expect(packageOf({ function: 'memcpy', binary: '/lib/x86_64-linux-gnu/libc.so.6' })).toBe('libc.so.6');
  });

  it('converts HSL to hex exactly', () => {
    expect(hslToHex(0, 100, 50)).toBe('#ff0000');
    expect(hslToHex(120, 100, 25)).toBe('#008000');
    expect(hslToHex(0, 0, 88)).toBe('#e0e0e0');
  });

  it('gives a package the same colour everywhere', () => {
    expect(frameColor({ function: 'crypto/sha256.block' })).toBe(frameColor({ function: 'crypto/sha256.Sum256' }));
    expect(packageColor('runtime')).toBe(packageColor('runtime'));
    const colours = new Set(['runtime', 'crypto/sha256', 'sort', 'main', 'fmt', 'math/rand', 'strings', 'sync'].map(packageColor));
    expect(colours.size).toBeGreaterThan(4);
  });
});

describe('diff colouring', () => {
  it('compares shares of each profile, not raw values', () => {
    expect(relativeChange(10, 100, 20, 200)).toBe(0);
    expect(relativeChange(10, 100, 30, 100)).toBeCloseTo(2);
    expect(relativeChange(10, 100, 5, 100)).toBeCloseTo(-0.5);
    expect(relativeChange(0, 100, 5, 100)).toBe(Infinity);
    expect(relativeChange(10, 100, 0, 100)).toBe(-1);
    expect(relativeChange(0, 100, 0, 100)).toBe(0);
  });

  it('is neutral grey when unchanged, red when grown, green when shrunk', () => {
    const neutral = rgb(diffColor(0));
    expect(neutral).toEqual([214, 214, 214]);
    expect(rgb(diffColor(DIFF_NEUTRAL_BELOW / 2))).toEqual(neutral);
    const [r1, g1] = rgb(diffColor(0.5));
    expect(r1).toBeGreaterThan(g1);
    const [r2, g2] = rgb(diffColor(-0.5));
    expect(g2).toBeGreaterThan(r2);
  });

  it('saturates at +-100% and for new frames, and grows monotonically', () => {
    expect(rgb(diffColor(1))).toEqual([214, 39, 40]);
    expect(rgb(diffColor(Infinity))).toEqual([214, 39, 40]);
    expect(rgb(diffColor(5))).toEqual([214, 39, 40]);
    expect(rgb(diffColor(-1))).toEqual([44, 160, 44]);
    let previousGreen = 255;
    for (const change of [0.02, 0.1, 0.3, 0.6, 1]) {
      const green = rgb(diffColor(change))[1];
      expect(green).toBeLessThan(previousGreen);
      previousGreen = green;
    }
  });

  it('is symmetric in intensity for growth and shrinkage', () => {
    const up = rgb(diffColor(0.25));
    const down = rgb(diffColor(-0.25));
    const distance = (color: number[], target: number[]) => Math.hypot(...color.map((value, index) => value - target[index]));
    const upShare = distance(up, [214, 214, 214]) / distance([214, 39, 40], [214, 214, 214]);
    const downShare = distance(down, [214, 214, 214]) / distance([44, 160, 44], [214, 214, 214]);
    expect(upShare).toBeCloseTo(downShare, 1);
  });
});
