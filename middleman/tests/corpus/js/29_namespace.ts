namespace Units {
  export const KG_PER_LB = 0.45359237;
  export function toKg(lb: number) {
    return lb * KG_PER_LB;
  }
  export namespace Volume {
    export const L_PER_GAL = 3.785411784;
  }
}

const weights = [10, 20, 35].map(Units.toKg);
const litres = 12 * Units.Volume.L_PER_GAL;
